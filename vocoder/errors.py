"""Exception types for mistakes a user can make; the CLI and the service turn these
into one clear line or a 4xx body instead of a traceback."""


class VocoderError(ValueError):
    """Base class of user-facing errors (bad input, bad checkpoint, bad options)."""


class AudioError(VocoderError):
    """Input audio could not be used: unreadable, empty, non-finite or too short."""


class CheckpointError(VocoderError):
    """A checkpoint is missing, malformed, or does not fit this code."""


class MelError(VocoderError):
    """A mel spectrogram does not match the model's mel convention or is unusable."""


class ConfigError(VocoderError):
    """A config (a recipe, an override, a checkpoint's config section) is malformed, names an
    unknown key, or has a bad value."""
