"""Secrets out of argv: each default on a realistic command line, near-misses left alone,
custom patterns, one-line errors naming a bad pattern, and linear time on long arguments."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procmon.enrich.redact import (
    DEFAULT_REDACT_PATTERNS,
    DEFAULT_REDACT_VALUE_AFTER,
    REDACTED,
    Redactor,
)

R = REDACTED
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["mysql", "-h", "db1", "-u", "root", "--password=hunter2", "shop"],
            ["mysql", "-h", "db1", "-u", "root", f"--password={R}", "shop"],
        ),
        (
            ["mysqldump", "--user=backup", "--password", "hunter2", "--all-databases"],
            ["mysqldump", "--user=backup", "--password", R, "--all-databases"],
        ),
        (
            ["curl", "-sS", "-H", "Authorization: Bearer abc.def-ghi", "https://api.example/v1"],
            ["curl", "-sS", "-H", f"Authorization: Bearer {R}", "https://api.example/v1"],
        ),
        (
            ["curl", "-H", "authorization: Basic dXNlcjpwYXNz", "https://x/"],
            ["curl", "-H", f"authorization: Basic {R}", "https://x/"],
        ),
        (
            ["curl", "-H", "Proxy-Authorization: Basic dXNlcjpwYXNz", "https://x/"],
            ["curl", "-H", f"Proxy-Authorization: Basic {R}", "https://x/"],
        ),
        (
            ["psql", "postgres://app:s3cr3t@db.internal:5432/shop?sslmode=require"],
            ["psql", f"postgres://app:{R}@db.internal:5432/shop?sslmode=require"],
        ),
        (
            ["redis-cli", "-u", "redis://:pw@cache:6379/0"],
            ["redis-cli", "-u", f"redis://:{R}@cache:6379/0"],
        ),
        (
            ["git", "clone", "https://bob:p@ss@git.example/repo.git"],  # unescaped "@"
            ["git", "clone", f"https://bob:{R}@git.example/repo.git"],
        ),
        (
            ["curl", "https://x/?a=1&token=abc&b=2"],
            ["curl", f"https://x/?a=1&token={R}&b=2"],
        ),
        (
            ["curl", "https://x/cb?code=1&ACCESS_TOKEN=abc"],
            ["curl", f"https://x/cb?code=1&ACCESS_TOKEN={R}"],
        ),
        (
            ["curl", "-d", "user=bob&password=hunter2&remember=1", "https://x/login"],
            ["curl", "-d", f"user=bob&password={R}&remember=1", "https://x/login"],
        ),
        (
            ["env", "PGPASSWORD=pa&ss word", "psql", "-h", "db"],
            ["env", f"PGPASSWORD={R}", "psql", "-h", "db"],
        ),
        (
            [
                "docker",
                "run",
                "-e",
                "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
                "-e",
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "-e",
                "AWS_SESSION_TOKEN=FwoGZXIvYXdzEBYaD",
                "amazon/aws-cli",
            ],
            [
                "docker",
                "run",
                "-e",
                f"AWS_ACCESS_KEY_ID={R}",  # half of the key pair: gitleaks flags it too
                "-e",
                f"AWS_SECRET_ACCESS_KEY={R}",
                "-e",
                f"AWS_SESSION_TOKEN={R}",
                "amazon/aws-cli",
            ],
        ),
        (
            ["kubectl", "--token", JWT, "get", "pods"],
            ["kubectl", "--token", R, "get", "pods"],
        ),
        (
            ["kubectl", f"--token={JWT}", "get", "pods"],
            ["kubectl", f"--token={R}", "get", "pods"],
        ),
        (["app", f"--config-jwt={JWT}"], ["app", f"--config-jwt={R}"]),  # bare JWT
        (
            ["vault", "login", "--API-KEY=abc", "--Client-Secret", "xyz"],  # any case
            ["vault", "login", f"--API-KEY={R}", "--Client-Secret", R],
        ),
        (
            ["x", "--pass=a", "--passwd=b", "--secret=c", "--api_key=d", "--apikey=e"],
            [
                "x",
                f"--pass={R}",
                f"--passwd={R}",
                f"--secret={R}",
                f"--api_key={R}",
                f"--apikey={R}",
            ],
        ),
        (
            ["x", "--access-key=a", "--client-secret=b", "--auth=user:pw"],
            ["x", f"--access-key={R}", f"--client-secret={R}", f"--auth={R}"],
        ),
        (
            ["sh", "-c", "mysql --password=hunter2 -h db shop"],  # a shell word ends at a blank
            ["sh", "-c", f"mysql --password={R} -h db shop"],
        ),
        (
            ["sh", "-c", 'curl -H "Authorization: Bearer abc" https://x/'],
            ["sh", "-c", f'curl -H "Authorization: Bearer {R}" https://x/'],
        ),
        (
            ["curl", "-d", '{"Authorization": "Bearer abc"}'],
            ["curl", "-d", f'{{"Authorization": "Bearer {R}"}}'],
        ),
        (
            ["azcopy", "cp", "https://acct.blob.core.windows.net/c?sv=2022&sig=Zm9v%2B&se=1", "."],
            ["azcopy", "cp", f"https://acct.blob.core.windows.net/c?sv=2022&sig={R}&se=1", "."],
        ),
    ],
)
def test_redacts(redactor: Redactor, argv: list[str], expected: list[str]) -> None:
    assert redactor.redact(argv) == (expected, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["mysql", "--password-file=/etc/mysql/pw", "shop"],  # a path, not a password
        ["app", "--password-file", "/etc/app/pw"],
        ["app", "--passwordless", "--tokens=4", "--secret-name=db-creds"],
        ["env", "PASSWORD_FILE=/run/secrets/db", "DB_PASSWORD_FILE=/run/secrets/db"],
        ["ssh", "-p", "2222", "host"],  # -p is a port here
        ["psql", "-p", "5432", "-U", "app", "shop"],
        ["curl", "https://example.com:8443/path?a=1&b=2"],
        ["curl", "http://[::1]:8080/"],
        ["git", "clone", "git@github.com:org/repo.git"],
        ["curl", "https://user@host/"],  # user, no password
        ["ls", "-la", "/tmp"],
        ["python3", "-c", "print('hello')"],
        ["mongod", "--auth", "--port", "27017"],  # --auth is a flag here
        ["echo", "token", "password", "secret"],
        ["echo", "ünïcödé", "🙂", ""],
    ],
)
def test_leaves_non_secrets(redactor: Redactor, argv: list[str]) -> None:
    assert redactor.redact(argv) == (argv, False)


def test_empty(redactor: Redactor) -> None:
    assert redactor.redact([]) == ([], False)
    assert redactor.redact([""]) == ([""], False)
    assert redactor.redact(["--password="]) == (["--password="], False)  # nothing to hide


def test_value_after_at_the_end_and_not_chained(redactor: Redactor) -> None:
    assert redactor.redact(["mysql", "--password"]) == (["mysql", "--password"], False)
    # the redacted value is a value: it does not hide what follows it
    assert redactor.redact(["x", "--token", "--token", "keep"]) == (
        ["x", "--token", R, "keep"],
        True,
    )
    # an option that takes no value still hides the next argument: over, not under
    assert redactor.redact(["mysql", "--password", "-u", "root"]) == (
        ["mysql", "--password", R, "root"],
        True,
    )


def test_value_after_is_a_full_match(redactor: Redactor) -> None:
    argv = ["x", "--tokenize", "words", "a--password", "b"]
    assert redactor.redact(argv) == (argv, False)


def test_input_not_modified_and_any_sequence(redactor: Redactor) -> None:
    argv = ("x", "--secret=a")
    assert redactor.redact(argv) == (["x", f"--secret={R}"], True)
    assert argv == ("x", "--secret=a")
    lst = ["--token", "abc"]
    redactor.redact(lst)
    assert lst == ["--token", "abc"]


def test_already_redacted_is_not_a_change(redactor: Redactor) -> None:
    assert redactor.redact([f"--password={R}"]) == ([f"--password={R}"], False)


def test_custom_patterns() -> None:
    r = Redactor(patterns=[r"sk_live_[0-9a-zA-Z]+", r"pin:(?P<secret>\d+)"], value_after=["-k"])
    assert r.redact(["pay", "sk_live_abc123", "pin:1234", "-k", "x", "--password=y"]) == (
        ["pay", R, f"pin:{R}", "-k", R, "--password=y"],
        True,
    )


def test_custom_pattern_matching_nothing_redacts_nothing() -> None:
    r = Redactor(patterns=[r"x*", r"a(?P<secret>b?)c", r"(?P<secret>q)?z"], value_after=[])
    assert r.redact(["abc", "ac", "z", "yyy"]) == ([f"a{R}c", "ac", "z", "yyy"], True)


def test_no_patterns_at_all() -> None:
    assert Redactor([], []).redact(["--password=x"]) == (["--password=x"], False)


@pytest.mark.parametrize(
    ("patterns", "value_after", "culprit"),
    [
        (["ok", "(unclosed"], [], "(unclosed"),
        ([], ["--good", "[z-a]"], "[z-a]"),
        (["a{2,1}"], [], "a{2,1}"),
    ],
)
def test_bad_pattern_is_named(patterns: list[str], value_after: list[str], culprit: str) -> None:
    with pytest.raises(ValueError) as err:
        Redactor(patterns, value_after)
    message = str(err.value)
    assert message.startswith(f"redact pattern '{culprit}': ")
    assert "\n" not in message
    assert len(message) > len(f"redact pattern '{culprit}': ")


def test_one_string_is_not_a_list_of_patterns() -> None:
    with pytest.raises(TypeError):
        Redactor(patterns="--password=.*")


def test_defaults_compile_and_are_public() -> None:
    assert len(DEFAULT_REDACT_PATTERNS) >= 5
    assert len(DEFAULT_REDACT_VALUE_AFTER) >= 1
    Redactor(DEFAULT_REDACT_PATTERNS, DEFAULT_REDACT_VALUE_AFTER)


@pytest.mark.parametrize(
    "arg",
    [
        "a" * 4096,
        "A" * 4096,
        " " * 4096,
        "-" * 4096,
        "password" * 512,
        "password=" * 455,
        "PASSWORD_" * 455,
        "--password " * 372,
        "token=&" * 585,
        "a://b:" * 682,
        "x://u:" + "a" * 4090,
        "x://:" + "@" * 4091,
        "a" * 2000 + "://" + ":" * 2000,
        "a+" * 2048,
        "a:" * 2048,
        "authorization:" + " " * 4082,
        "authorization:" * 292,
        "Authorization: " + "a " * 2040,
        "eyJ" * 1365,
        "eyJa." * 819,
        "eyJa.eyJb." * 409,
    ],
    ids=lambda a: f"{a[:12]!r}x{len(a)}",
)
def test_long_argument_is_linear(redactor: Redactor, arg: str) -> None:
    start = time.perf_counter()
    redactor.redact([arg] * 4)
    # about 2 ms here; catastrophic backtracking on 4 KB takes seconds
    assert time.perf_counter() - start < 0.5


@given(st.lists(st.text(max_size=200), max_size=8))
def test_never_raises_and_keeps_length(argv: list[str]) -> None:
    out, changed = Redactor().redact(argv)
    assert len(out) == len(argv)
    assert changed == (out != argv)


GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/python3", "-m", "pytest", "tests/test_x.py", "-k", "foo"],
        ["/bin/true"] + ["x"] * 511,
        ["a" * 1020],
        ["mysql"] + ["-pX"] * 255,
        ["app"] + ["--password", "x"] * 78,
        ["sh", "-c", "a=b " * 250],
        ["sh", "-c", "mysql" + " -pX" * 248],
        ["app"] + [GHP] * 25,
    ],
    ids=lambda a: f"{a[0][:10]}x{len(a)}",
)
def test_cost_stays_bounded(redactor: Redactor, argv: list[str]) -> None:
    """A loose guard for the hot path (every exec): 1024 bytes of argv, the most the probe
    captures, in well under half a millisecond (the bound is ~10x lower: measured in
    bench/results.md by `make bench-event-cost`, not asserted here)."""
    redactor.redact(argv)
    best = min(_timed(redactor, argv) for _ in range(5))
    assert best < 5e-4, f"{best * 1e6:.0f} us"


def _timed(redactor: Redactor, argv: list[str]) -> float:
    start = time.perf_counter()
    for _ in range(10):
        redactor.redact(argv)
    return (time.perf_counter() - start) / 10


def test_an_argv_with_too_many_trigger_words_is_hidden_but_argv0(redactor: Redactor) -> None:
    """Past the cost bound the argv is not looked at rule by rule: argv[0] stays."""
    argv = ["app", *["--password", "x"] * 20]
    assert redactor.redact(argv) == (["app", *["<redacted>"] * 40], True)


def test_a_keyed_program_with_hundreds_of_options_is_hidden_but_argv0(redactor: Redactor) -> None:
    assert redactor.redact(["mysql", *["-pX"] * 100])[0] == ["mysql", *["<redacted>"] * 100]
    few = ["mysql", "-u", "app", "-pX", "db"]  # a real one: rule by rule
    assert redactor.redact(few)[0] == ["mysql", "-u", "app", "-p<redacted>", "db"]


def test_long_shell_string_naming_a_keyed_program_is_hidden_whole(redactor: Redactor) -> None:
    script = "echo start; " * 30 + "/usr/bin/mysql -u app -pX db"
    assert redactor.redact(["sh", "-c", script])[0] == ["sh", "-c", "<redacted>"]


def test_long_shell_string_keeps_what_no_rule_hides(redactor: Redactor) -> None:
    script = "cd /src && make -j2 all && " * 20 + "PGPASSWORD=pw psql -h db --token abc x"
    out = redactor.redact(["sh", "-c", script])[0]
    assert out[2] == script.replace("=pw", "=<redacted>").replace(" abc", " <redacted>")
    plain = "ls -la /tmp; " * 30
    assert redactor.redact(["sh", "-c", plain]) == (["sh", "-c", plain], False)
