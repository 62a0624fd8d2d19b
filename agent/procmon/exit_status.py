"""The exit statuses of every procmon command."""

EXIT_OK = 0
# The probe or a sink could not start, a check failed, or fewer events came than asked for.
EXIT_FAILURE = 1
# Bad configuration, options, credentials or TLS files: one line on stderr names the culprit.
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
