"""The one error type the command line turns into a one-line message and a non-zero exit, and how
to tell (and say in a few words) an error that comes from the storage under a store or a run."""


class SactError(Exception):
    """A problem with the user's input or environment; the message is one line for the user."""


class Interrupted(SactError):
    """Ctrl-C, once what was under way is saved: `what` says where the work stopped and `again` is
    the one instruction that continues it. The command line prints them as one line and exits with
    status 130, the shell's for SIGINT."""

    def __init__(self, what: str, again: str) -> None:
        super().__init__(f"{what}; {again}")
        self.what, self.again = what, again


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` comes from the storage under a store: the file system (no space, no
    permission, an I/O error) or object storage (s3fs raises OSError; botocore, aiobotocore and
    aiohttp raise types of their own, e.g. NoCredentialsError, after their retries)."""
    return isinstance(error, OSError) or type(error).__module__.startswith(
        ("botocore", "aiobotocore", "aiohttp")
    )


def storage_error_reason(error: BaseException) -> str:
    """A storage error in a few words: what failed, and on which file if it says."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error) or type(error).__name__
