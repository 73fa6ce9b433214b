"""voxloop's one error hierarchy.

Every error a user can cause or meet carries a message that says what failed and what to do
next; the CLI prints it on one line and exits with the class's ``exit_code`` (tracebacks only
with ``--debug``)::

    VoxloopError                      exit 1
    ├── ConfigError                   exit 2   bad setting, flag or config file
    ├── AudioInputError               exit 3   missing, empty, corrupt or unsupported audio
    ├── AudioDeviceError              exit 4   no microphone / speaker, PortAudio missing, busy
    ├── ModelNotFoundError            exit 5   STT/TTS/LLM weights not where expected
    └── LLMError                      exit 6   anything between voxloop and the LLM server
        ├── LLMUnavailableError                nothing listens at the URL, or it timed out
        ├── LLMServerError                     the server answered with an HTTP error
        │   └── LLMContextOverflowError        the prompt is longer than the model's context
        ├── LLMProtocolError                   the answer is not OpenAI-compatible JSON
        └── LLMModelNotServedError             the model name is not one the server has
"""

from __future__ import annotations


class VoxloopError(Exception):
    """Base class: a failure with a message meant for the person at the keyboard."""

    exit_code = 1


class ConfigError(VoxloopError):
    exit_code = 2


class AudioInputError(VoxloopError):
    exit_code = 3


class AudioDeviceError(VoxloopError):
    exit_code = 4


class ModelNotFoundError(VoxloopError):
    exit_code = 5


class LLMError(VoxloopError):
    exit_code = 6


class LLMUnavailableError(LLMError):
    pass


class LLMServerError(LLMError):
    pass


class LLMContextOverflowError(LLMServerError):
    pass


class LLMProtocolError(LLMError):
    pass


class LLMModelNotServedError(LLMError):
    pass
