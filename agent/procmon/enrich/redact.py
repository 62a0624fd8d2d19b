"""Secrets out of command lines before an exit record leaves the host.

argv is world-readable on the host, but an exit record travels to a broker and its subscribers.
Rules err towards hiding too much: a hidden harmless word costs a little reading, a leaked
password a rotation. This runs for every exec and a local user picks the argv, so its cost is
bounded. What is caught and how the bound holds: docs/design.md; real-world lines are in
tests/helpers/redact_corpus.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import compress

__all__ = ["DEFAULT_REDACT_PATTERNS", "DEFAULT_REDACT_VALUE_AFTER", "REDACTED", "Redactor"]

REDACTED = "<redacted>"
_R_MANY = [REDACTED] * 1024


def _lb(words: Sequence[str], tail: str = "") -> str:
    """One fixed-width look-behind per word (Python's re wants each alternative fixed)."""
    return "(?:" + "|".join(f"(?<={re.escape(w + tail)})" for w in words) + ")"


# The last word of an option or key that holds a secret. "-pass", "_pass": a word of its own, so
# --become-pass counts and --bypass does not.
_OPT_WORDS = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "api-key", "api_key",
    "access-key", "access_key", "secret-key", "secret_key", "account-key", "account_key",
    "secret-id", "secret_id", "bearer", "storepass", "keypass", "-pwd", "_pwd", "credential",
)  # fmt: skip
_EQ_WORDS = (*_OPT_WORDS, "-pass", "_pass", "-auth")
# key=value anywhere: also signatures (Azure SAS sig=), npm's _auth, mysql_pwd.
_KV_WORDS = (
    *_OPT_WORDS, "-pass", "_pass", "accountkey", "accesskey", "secretkey", "signature",
    "&sig", "?sig", "_auth", "?auth", "&auth", "privatekey", "private_key",
)  # fmt: skip
_ENV_WORDS = (
    "PASSWORD", "PASSWD", "_PASS", "SSHPASS", "PASSPHRASE", "SECRET", "TOKEN", "API_KEY",
    "APIKEY", "ACCESS_KEY", "SECRET_KEY", "ACCOUNT_KEY", "SECRET_ID", "_PWD", "_AUTH",
    "CREDENTIALS", "PRIVATE_KEY",
)  # fmt: skip
_HEADERS = (
    "authorization", "cookie", "api-key", "apikey", "x-vault-token", "private-token",
    "job-token", "auth-token", "access-token", "api-token", "x-auth", "x-token", "session-token",
    "x-amz-security-token",
)  # fmt: skip
_JSON_KEYS = (*_OPT_WORDS, "pass", "_pass", "apikey", "privatekey", "private_key", "_auth")
# Not options that take no value: --no-password, --ask-vault-pass, keytool's -storepasswd.
_NOT_SECRET_OPT = r"(?!--?(?:no|ask|skip|prompt|with)-|-(?:store|key)passwd(?![^\0]))"
_SCHEMES = r"(?:bearer|basic|token|digest|negotiate|ntlm|aws4-hmac-sha256|bot|apikey|sso-key|otp)"

# Built-in patterns, the default of `enrich.redact`: two groups each (the part kept, `secret`),
# matched in the NUL-joined argv, where "\0" is an argument boundary.
DEFAULT_REDACT_PATTERNS: tuple[str, ...] = (
    # --password=VALUE, --db-password=VALUE, -storepass=VALUE: the rest of the argument.
    rf"(?i)(\0{_NOT_SECRET_OPT}--?[a-z0-9_.-]*+={_lb(_EQ_WORDS, '=')})(?P<secret>[^\0]+)",
    # An environment assignment that is a whole argument (env PGPASSWORD=x, docker -e
    # AWS_SECRET_ACCESS_KEY=x): the rest of the argument. Upper case only, as names are.
    rf"(\0[A-Z0-9_]*+={_lb(_ENV_WORDS, '=')})(?P<secret>[^\0]+)",
    # key=value anywhere (query strings, forms, mount -o, embedded env): up to & , ; or space.
    rf"(?i)(={_lb(_KV_WORDS, '=')})(?P<secret>[^&,;\s\0]+)",
    # Headers (curl -H, git -c http.extraheader, JSON): after the optional scheme word, up to a
    # quote or the end of the line.
    rf"(?i)(:(?:{_lb(_HEADERS, ':')}|{_lb(_HEADERS, chr(34) + ':')}|{_lb(_HEADERS, chr(39) + ':')})"
    rf"[ \t]*+[\"']?[ \t]*+(?:{_SCHEMES}[ \t]++)?)(?P<secret>[^'\"\r\n\0]+)",
    # JSON bodies: "password": "VALUE", "api_key":"VALUE".
    rf"(?i)(:{_lb(_JSON_KEYS, chr(34) + ':')}[ \t]*+\")(?P<secret>(?:[^\"\\\0]|\\[^\0])+)",
    rf"(?i)(:{_lb(_JSON_KEYS, chr(34) + ' :')}[ \t]*+\")(?P<secret>(?:[^\"\\\0]|\\[^\0])+)",
    # The password of user:password@ in a URL; up to the last "@" before the path, so an
    # unescaped "@" in the password is hidden too.
    r"((?<=[A-Za-z0-9])://[^/?#@\s\0:]*+:)(?P<secret>[^/?#\s\0]+)(?=@)",
    # A JSON Web Token anywhere: header and payload are base64url of '{"...'.
    r"()(?P<secret>eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]*+\.eyJ[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]*+)",
    # Vendor token formats (gitleaks, trufflehog), anywhere, whole token.
    r"()(?P<secret>A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z2-7]{16}(?![A-Za-z0-9]))",
    r"()(?P<secret>g(?<![A-Za-z0-9]g)(?:h[pousr]_[A-Za-z0-9]{30,}+|ithub_pat_[A-Za-z0-9_]{22,}+))",
    r"()(?P<secret>gl(?<![A-Za-z0-9]gl)(?:pat|ptt|rt|dt|soat|ft|imt|cbt|agent)-[A-Za-z0-9_-]{20,}+)",
    r"()(?P<secret>glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})",
    r"()(?P<secret>x(?:ox[abposre]|app)-[A-Za-z0-9-]{10,}+)",
    r"(hooks\.slack\.com/(?:services|workflows)/)(?P<secret>[A-Za-z0-9/_-]+)",
    r"()(?P<secret>[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,}+)",
    r"()(?P<secret>AIza[A-Za-z0-9_-]{35})",
    r"()(?P<secret>hv[sbr]\.[A-Za-z0-9_-]{20,}+)",
    r"()(?P<secret>sk-(?:proj-|ant-[a-z]{3}\d\d-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}+)",
    r"()(?P<secret>npm_[A-Za-z0-9]{36})",
    r"()(?P<secret>pypi-AgE[A-Za-z0-9_-]{50,}+)",
    r"()(?P<secret>SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
    r"()(?P<secret>dop_v1_[a-f0-9]{64})",
    r"()(?P<secret>shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32})",
    r"()(?P<secret>hf_[A-Za-z]{34})",
    r"()(?P<secret>dckr_pat_[A-Za-z0-9_-]{27})",
    r"()(?P<secret>PMAK-[a-f0-9]{24}-[a-f0-9]{34})",
    r"()(?P<secret>lin_api_[A-Za-z0-9]{40})",
    r"()(?P<secret>AGE-SECRET-KEY-1[0-9A-Z]{58})",
    r"()(?P<secret>dapi[a-f0-9]{32})",
    # PEM private keys: the body between the BEGIN and END lines.
    r"(-----BEGIN [A-Z0-9 ]{0,32}PRIVATE KEY-----)(?P<secret>(?:[^\0-]|-(?!----END))+)",
    # An AWS secret access key (40 characters of base64, one not lower-case hex, so not a git
    # hash) as a whole argument, on a command line that mentions aws.
    r"(\0)(?P<secret>(?=[a-z0-9]{0,39}[A-Z/+])[A-Za-z0-9/+]{40})(?=\0)",
)

# Which substrings must occur (lower-cased argv; `cs`: as is) for a built-in pattern to match.
_CI = ("pass", "pwd", "secret", "token", "key", "auth", "bearer", "cookie", "sig", "cred", "aws")
_W = ("pass", "pwd", "secret", "token", "key", "auth", "bearer", "cred")
_PATTERN_TRIGGERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = dict(
    zip(
        DEFAULT_REDACT_PATTERNS,
        [
            (_W, ()),
            (_W, ()),
            ((*_W, "sig"), ()),
            (("auth", "cookie", "key", "token"), ()),
            (_W, ()),
            (_W, ()),
            ((), ("://",)),
            ((), ("eyJ",)),
            ((), ("AKIA", "ASIA", "ABIA", "ACCA", "A3T")),
            ((), ("gh", "github_pat_")),
            ((), ("gl",)),
            ((), ("glsa_",)),
            ((), ("xox", "xapp-")),
            ((), ("hooks.slack",)),
            ((), ("k_live_", "k_test_", "k_prod_")),
            ((), ("AIza",)),
            ((), ("hvs.", "hvb.", "hvr.")),
            ((), ("sk-",)),
            ((), ("npm_",)),
            ((), ("pypi-",)),
            ((), ("SG.",)),
            ((), ("dop_v1_",)),
            ((), ("shp",)),
            ((), ("hf_",)),
            ((), ("dckr_pat_",)),
            ((), ("PMAK-",)),
            ((), ("lin_api_",)),
            ((), ("AGE-SECRET",)),
            ((), ("dapi",)),
            ((), ("PRIVATE KEY",)),
            (("aws",), ()),
        ],
        strict=True,
    )
)

# An argument fully matching these hides the next (--password X, --auth-token X). Not -p (a port
# for ssh, psql, docker: see _PROGRAM_RULES), --auth (a mongod flag) or --pass (rarely an option).
DEFAULT_REDACT_VALUE_AFTER: tuple[str, ...] = (
    rf"(?i){_NOT_SECRET_OPT}--?[a-z0-9_.-]*(?:password|passwd|passphrase|secret|token"
    r"|api[-_]?key|access[-_]key|secret[-_]key|account[-_]key|secret[-_]id|bearer|storepass"
    r"|keypass|[-_]pwd|credential)",
)
# The same over the joined argv. The value is left alone when it names where the secret is
# (openssl's env:/file:/fd:, docker build's --secret id=...); pass:X keeps "pass:".
_VALUE_AFTER_JOINED = {
    DEFAULT_REDACT_VALUE_AFTER[0]: (
        rf"(?i)(\0{_NOT_SECRET_OPT}--?[a-z0-9_.-]*+{_lb(_OPT_WORDS)}\0(?:pass:)?)"
        r"(?!(?:env|file|fd|id|src|type|source)[:=]|stdin\0)(?P<secret>[^\0]+)"
    )
}
_VALUE_AFTER_TRIGGERS = {DEFAULT_REDACT_VALUE_AFTER[0]: _W}


def _attached(opt: str) -> str:  # -pSECRET
    return rf"(\0{opt})(?P<secret>[^\0]+)"


def _either(opt: str) -> str:  # -p SECRET or -pSECRET
    return rf"(\0{opt}\0?)(?P<secret>[^\0]+)"


def _separate(opt: str) -> str:  # -P SECRET
    return rf"(\0{opt}\0)(?P<secret>[^\0]+)"


_USERPASS = r"(\0(?:-u|-U|--user|--proxy-user)[=\0]?[^\0:]*:)(?P<secret>[^\0]+)"
_Rule = tuple[str | None, str]  # (condition substring or None, pattern)


def _each(names: str, *rules: _Rule) -> dict[str, tuple[_Rule, ...]]:
    return {name: rules for name in names.split()}


# Built-in, not configurable: program -> rules. A rule applies from the program's own argument
# on, and only if its condition (if any) occurs in the joined argv.
_OPENSSL_PASS = r"(\0-(?:pass|passin|passout|password|passwd|srcpass|destpass)\0pass:)"
_PROGRAM_RULES: dict[str, tuple[_Rule, ...]] = {
    **_each(
        "mysql mysqldump mysqladmin mysqlimport mysqlshow mysqlcheck mysqlpump mysqlbinlog "
        "mysqlslap mysqlsh mariadb mariadb-dump mariadb-admin mariadb-import mariadb-show "
        "mariadb-check mariadb-binlog mariadb-slap mydumper myloader",
        (None, _attached("-p")),
    ),
    **_each("sshpass", (None, _either("-p"))),
    **_each("redis-cli valkey-cli keydb-cli", (None, _either("-a"))),
    **_each(
        "mongo mongosh mongodump mongorestore mongoexport mongoimport mongostat mongotop",
        (None, _either("-p")),
    ),
    **_each(
        "docker podman nerdctl helm buildah skopeo oras crane regctl az",
        ("\0login\0", _either("-p")),
    ),
    **_each(
        "ldapsearch ldapadd ldapmodify ldapdelete ldapwhoami ldapcompare ldapmodrdn ldapexop",
        (None, _either("-w")),
    ),
    **_each("ldappasswd", (None, _either("-w")), (None, _separate("-s")), (None, _separate("-a"))),
    **_each("sqlcmd bcp osql isql", (None, _either("-P"))),
    **_each("openssl", (None, _OPENSSL_PASS + r"(?P<secret>[^\0]+)"), (None, _separate("-k"))),
    **_each("keytool", (None, _separate("-new"))),
    **_each("curl wget", (None, _USERPASS)),
    **_each("smbclient", (None, r"(\0(?:-U\0?|--user[=\0])[^\0%]*%)(?P<secret>[^\0]+)")),
    **_each("lftp", (None, r"(\0-u\0[^\0,]*,)(?P<secret>[^\0]+)")),
    **_each(
        "sqlplus rman exp imp expdp impdp sqlldr",
        (None, r"(\0[^\0@/-][^\0@/]*/)(?P<secret>[^\0@]+)"),
    ),
    **_each("zip unzip mosquitto_pub mosquitto_sub mosquitto_rr", (None, _separate("-P"))),
    **_each("7z 7za 7zz 7zr rar unrar", (None, _attached("-p"))),
    **_each("useradd usermod", (None, _separate("-p"))),
    **_each("htpasswd", (None, r"(\0-[a-zA-Z]*b[a-zA-Z]*\0[^\0]+\0[^\0]+\0)(?P<secret>[^\0]+)")),
    **_each("vault", (None, r"(\0login\0)(?!-)(?P<secret>[^\0]+)")),
    **_each(
        "nmcli", (None, r"(\0(?:password|wifi-sec\.psk|802-1x\.password)\0)(?P<secret>[^\0]+)")
    ),
    **_each("wpa_passphrase", (None, r"(^\0[^\0]*\0[^\0]*\0)(?P<secret>[^\0]+)")),
    **_each("aws", (None, r"(\0[a-z_.]*(?:secret_access_key|session_token)\0)(?P<secret>[^\0]+)")),
    **_each("doctl linode-cli", (None, _either("-t"))),
    **_each("npm pnpm yarn", (None, r"(?i)(\0[^\0]*_auth(?:token)?\0)(?P<secret>[^\0]+)")),
}
# Programs with a rule that fires without an option dash: a shell string without " -" is
# looked at only if it names one of them (or holds a trigger word).
_POSITIONAL_PROGRAMS = ("sqlplus", "rman", "exp", "imp", "sqlldr", "vault", "nmcli", "wpa_pass")

_SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "ksh93", "yash", "fish"))
_WRAPPERS = frozenset(
    "sudo doas env exec nohup nice ionice time timeout stdbuf command builtin setsid chrt taskset "  # noqa: SIM905
    "chroot unbuffer xargs watch".split()
)
# Wrapper options that take a value (the value is skipped with the option).
_WRAPPER_OPT_ARGS = frozenset(("-u", "-g", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "-n"))
_SSH_OPT_ARGS = frozenset(
    "-b -c -D -E -e -F -I -i -J -L -l -m -O -o -p -Q -R -S -W -w".split()  # noqa: SIM905
)

_MAX_DEPTH = 4
# The cost bound: past these counts an argv is hidden bluntly (argv[0] kept; long shell strings
# go to Redactor._long_shell) rather than looked at longer. Real command lines stay far below.
_MAX_HITS = 16
_MAX_OPTIONS = 64
_MAX_SHELL_WORDS = 20

# Shell words: one piece per match; adjacent pieces not separated by blanks or operators form a
# word. Each alternative starts with its own characters, so the scan is linear.
_PIECE = re.compile(
    r"""(?P<blank>[ \t\r]+)|(?P<op>&&|\|\||[;&|()\n`]|\$\()|(?P<redir>[<>])"""
    r"""|(?P<sq>'[^']*+'?)|(?P<dq>"(?:[^"\\]|\\.)*+"?)|(?P<esc>\\.?)"""
    r"""|(?P<plain>[^\s'"\\;&|()<>`$]++|\$)""",
    re.S,
)
# Shell operators and quotes as blanks: str.split() then gives a shell string's words roughly,
# at C speed, only to see which programs it names.
_SHELL_PUNCTUATION_TO_BLANK = str.maketrans(dict.fromkeys(";&|()'\"`<>", " "))
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*+=")


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        raise TypeError(f"{what} must be a sequence of regexes, not one str")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except (re.error, OverflowError, RecursionError) as e:
            raise ValueError(f"redact pattern '{p}': {e}") from e
    return compiled


def _replace_secret(m: re.Match[str]) -> str:
    """The match with its `secret` group (or, without one, all of it) replaced by REDACTED;
    an empty or absent secret is left alone, so a pattern that can match nothing redacts
    nothing rather than sprinkling REDACTED between characters."""
    whole = m.group(0)
    if "secret" not in m.re.groupindex:
        return REDACTED if whole else whole
    start, end = m.span("secret")
    if start == end:  # empty, or the group did not take part (-1, -1)
        return whole
    base = m.start()
    return whole[: start - base] + REDACTED + whole[end - base :]


def _apply(rx: re.Pattern[str], joined: str) -> str:
    """Replace the second group of every match of a two-group rule, in C: split keeps the
    groups, every third part is a secret."""
    parts = rx.split(joined)
    if len(parts) == 1:
        return joined
    n = len(parts) // 3
    parts[2::3] = _R_MANY[:n] if n <= len(_R_MANY) else [REDACTED] * n
    return "".join(parts)


def _basename(arg: str) -> str:
    return arg.rpartition("/")[2]


def _program_index(args: Sequence[str], i: int) -> int:
    """Index of the program in args[i:], past wrappers (sudo -u x, env A=b, exec, timeout 5);
    -1 if there is none."""
    n = len(args)
    while i < n:
        base = _basename(args[i])
        if base not in _WRAPPERS:
            return i
        i += 1
        while i < n:
            a = args[i]
            if a == "--":
                i += 1
                break
            if a.startswith("-") and len(a) > 1:
                takes_value = a in _WRAPPER_OPT_ARGS or (base == "timeout" and a in ("-k", "-s"))
                i += 2 if takes_value else 1
            elif ("=" in a and base == "env") or (
                base in ("timeout", "nice", "chrt", "taskset") and a[:1].isdigit()
            ):
                i += 1
            else:
                break
    return -1


class _Word:
    __slots__ = ("end", "map", "start", "value")

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = start
        self.value = ""
        self.map: list[int] | None = None  # value index -> source index, once quoting is seen


class Redactor:
    """Compiled redaction rules, built once (from config) and applied to every exit's argv."""

    def __init__(
        self,
        patterns: Sequence[str] = DEFAULT_REDACT_PATTERNS,
        value_after: Sequence[str] = DEFAULT_REDACT_VALUE_AFTER,
    ) -> None:
        """Raise ValueError naming the pattern if one is not a valid regex, so a typo in the
        configuration stops the agent at start rather than at the first exit."""
        compiled = _compile(patterns, "patterns")
        compiled_after = _compile(value_after, "value_after")
        # (case-insensitive triggers, case-sensitive triggers, rule) for built-in rules; the
        # others apply to each argument.
        self._joined: list[tuple[tuple[str, ...], tuple[str, ...], re.Pattern[str]]] = []
        self._custom: list[re.Pattern[str]] = []
        self._custom_after: list[re.Pattern[str]] = []
        for p, rx in zip(patterns, compiled, strict=True):
            if p in _PATTERN_TRIGGERS:
                self._joined.append((*_PATTERN_TRIGGERS[p], rx))
            else:
                self._custom.append(rx)
        for p, rx in zip(value_after, compiled_after, strict=True):
            if p in _VALUE_AFTER_JOINED:
                self._joined.append(
                    (_VALUE_AFTER_TRIGGERS[p], (), re.compile(_VALUE_AFTER_JOINED[p]))
                )
            else:
                self._custom_after.append(rx)
        # Substring tests run at C speed; one regex alternation of them all would not (the
        # engine tries each alternative at each position).
        self._ci = tuple(sorted({t for ci, _, _ in self._joined for t in ci}))
        self._cs = tuple(sorted({t for _, cs, _ in self._joined for t in cs}))
        self._plans: dict[frozenset[str], tuple[re.Pattern[str], ...]] = {}
        self._programs = {
            name: tuple((cond, re.compile(rx)) for cond, rx in rules)
            for name, rules in _PROGRAM_RULES.items()
        }
        # Programs with keyed options and nested shells, as a long shell string may name them.
        self._keyed_names = frozenset((*_PROGRAM_RULES, *_SHELLS, "su", "runuser", "ssh"))

    def redact(self, args: Sequence[str]) -> tuple[list[str], bool]:
        """argv with secrets replaced, and whether the result differs from args.

        Built-in rules see the whole argv (an option and its value are two arguments); custom
        patterns see one argument at a time, and a custom value_after match hides the next
        argument, which hides nothing itself.
        """
        if not args:
            return [], False
        joined = "\0" + "\0".join(args)
        if joined.count("\0") != len(args):
            return self._redact_with_nul(args)
        out = self._argv(args, joined, 0)
        if out is None:
            out = list(args)
        if self._custom:
            out = [self._sub_custom(a) for a in out]
        if self._custom_after:
            out = self._after_custom(args, out)
        return out, out != list(args)

    # -- the built-in rules -------------------------------------------------------------------

    def _plan(self, joined: str) -> tuple[tuple[re.Pattern[str], ...], int]:
        """The built-in rules that can match, and how many trigger words occur."""
        low = joined.lower()
        ci = list(compress(self._ci, map(low.__contains__, self._ci)))  # C loops, no bytecode
        cs = list(compress(self._cs, map(joined.__contains__, self._cs)))
        if not ci and not cs:
            return (), 0
        hits = sum(map(low.count, ci)) + sum(map(joined.count, cs))
        key = frozenset((*ci, *cs))
        plan = self._plans.get(key)
        if plan is None:
            plan = tuple(
                rx
                for tci, tcs, rx in self._joined
                if key.intersection(tci) or key.intersection(tcs)
            )
            if len(self._plans) < 4096:
                self._plans[key] = plan
        return plan, hits

    def _argv(self, args: Sequence[str], joined: str, depth: int) -> list[str] | None:
        """Redacted args (joined is "\\0" + "\\0".join(args)), or None if nothing changed."""
        prog_i = _program_index(args, 0)
        prog = _basename(args[prog_i]) if prog_i >= 0 else ""
        rules = self._programs.get(prog)
        shell_i = -1  # index of a shell command string, handled on its own
        sub_i = -1  # start of a nested argv (ssh host CMD..., kubectl exec pod -- CMD...)
        if depth < _MAX_DEPTH:
            if prog in _SHELLS or prog in ("su", "runuser"):
                shell_i = _shell_string_index(args, prog_i, prog)
            elif prog == "ssh":
                shell_i, sub_i = _ssh_command(args, prog_i)
            elif depth == 0 and "\0--\0" in joined:
                sub_i = args.index("--", prog_i + 1) + 1 if prog_i >= 0 else -1
        plan, hits = self._plan(joined)
        shell_str = ""
        shell_triggers = bool(plan)  # whether the shell string may hold a trigger word
        if shell_i >= 0:  # blank it out for the other rules: _shell looks at it
            shell_str = args[shell_i]
            args = [*args[:shell_i], "", *args[shell_i + 1 :]]
            joined = "\0" + "\0".join(args)
            if plan:
                plan, hits = self._plan(joined)
        if hits > _MAX_HITS or (rules is not None and joined.count("\0-") > _MAX_OPTIONS):
            return [args[0], *[REDACTED] * (len(args) - 1)]
        if not plan and rules is None and shell_i < 0 and sub_i < 0:
            return None
        new = joined
        if rules is not None:
            offset = sum(map(len, args[:prog_i])) + prog_i
            tail = new[offset:]
            for cond, rx in rules:
                if cond is None or cond in tail:
                    tail = _apply(rx, tail)
            new = new[:offset] + tail
        for rx in plan:
            new = _apply(rx, new)
        out = new[1:].split("\0") if new is not joined else list(args)
        if sub_i >= 0 and sub_i < len(out):
            sub = out[sub_i:]
            nested = self._argv(sub, "\0" + "\0".join(sub), depth + 1)
            if nested is not None:
                out[sub_i:] = nested
        if shell_i >= 0:
            out[shell_i] = self._shell(shell_str, depth + 1, shell_triggers)
        return out

    # -- shell command strings ----------------------------------------------------------------

    def _shell(self, s: str, depth: int, triggers: bool = True) -> str:
        """s with secrets replaced; ``triggers`` False: s is known to hold no trigger word."""
        plan, hits = self._plan("\0" + s) if triggers else ((), 0)
        keyed = self._names_keyed(s)
        # Without a trigger word only a program's own options can hold a secret.
        if not (plan or any(map(s.lower().__contains__, _POSITIONAL_PROGRAMS))) and (
            not (" -" in s or "\t-" in s) or not keyed
        ):
            return s
        if s.count(" ") + s.count("\t") + s.count("\n") > _MAX_SHELL_WORDS:
            return self._long_shell(s, plan, hits, keyed)
        out: list[str] = []
        done = 0
        for words in _commands(s):
            values = [w.value for w in words]
            i = 0
            while i < len(values) - 1 and _ASSIGNMENT.match(values[i]):
                i += 1
            # assignments before the program count as arguments of the rules, not as it
            new = self._argv_words(values, i, depth)
            if new is None:
                continue
            for w, old, red in zip(words, values, new, strict=True):
                if old == red:
                    continue
                out.append(s[done : w.start])
                out.append(_requote(s, w, old, red))
                done = w.end
        if not out:
            return s
        out.append(s[done:])
        return "".join(out)

    def _long_shell(self, s: str, plan: tuple[re.Pattern[str], ...], hits: int, keyed: bool) -> str:
        """A shell string too long to split into words within the cost bound: redacted whole if
        it names a keyed program or a shell, else the built-in rules with spaces as boundaries."""
        if keyed or hits > _MAX_HITS:
            return REDACTED
        # Spaces as argument boundaries (quotes aside), so "--token X" is an option and its
        # value as in an argv; a NUL cannot be in the string, so it maps back exactly.
        new = "\0" + s.replace(" ", "\0")
        for rx in plan:
            new = _apply(rx, new)
        return new[1:].replace("\0", " ")

    def _names_keyed(self, s: str) -> bool:
        """Whether a shell string names a program with keyed options, or a nested shell."""
        words = set(s.translate(_SHELL_PUNCTUATION_TO_BLANK).split())
        return not words.isdisjoint(self._keyed_names) or not self._keyed_names.isdisjoint(
            w.rpartition("/")[2] for w in words if "/" in w
        )

    def _argv_words(self, values: list[str], prog_from: int, depth: int) -> list[str] | None:
        if prog_from == 0:
            return self._argv_checked(values, depth)
        head = values[:prog_from]
        head_out = self._argv_checked(["env", *head], depth)  # env-like: assignments only
        rest_out = self._argv_checked(values[prog_from:], depth)
        if head_out is None and rest_out is None:
            return None
        return [
            *(head_out[1:] if head_out is not None else head),
            *(rest_out if rest_out is not None else values[prog_from:]),
        ]

    def _argv_checked(self, values: list[str], depth: int) -> list[str] | None:
        if not values:
            return None
        joined = "\0" + "\0".join(values)
        if joined.count("\0") != len(values):
            return None
        return self._argv(values, joined, depth)

    # -- custom patterns ----------------------------------------------------------------------

    def _sub_custom(self, arg: str) -> str:
        for pattern in self._custom:
            arg = pattern.sub(_replace_secret, arg)
        return arg

    def _after_custom(self, args: Sequence[str], out: list[str]) -> list[str]:
        hide_next = False
        for i, arg in enumerate(args):
            if hide_next:
                out[i] = REDACTED
                hide_next = False
                continue
            hide_next = any(p.fullmatch(arg) for p in self._custom_after)
        return out

    def _redact_with_nul(self, args: Sequence[str]) -> tuple[list[str], bool]:
        """A NUL cannot be in a kernel argv; if a caller passes one, it is read as a blank, and
        comes back as one in an argument that was redacted."""
        spaced = [a.replace("\0", " ") for a in args]
        out, _ = self.redact(spaced)
        out = [a if o == s else o for a, s, o in zip(args, spaced, out, strict=True)]
        return out, out != list(args)


def _shell_string_index(args: Sequence[str], prog_i: int, prog: str) -> int:
    """The argument that is the command string of sh -c / bash -lc / su -c; -1 if none."""
    for i in range(prog_i + 1, len(args)):
        a = args[i]
        if a == "--command" or (a == "-c" and prog in ("su", "runuser")):
            return i + 1 if i + 1 < len(args) else -1
        if a.startswith("-") and not a.startswith("--") and "c" in a and prog not in ("su",):
            return i + 1 if i + 1 < len(args) else -1
        if not a.startswith("-") and prog in _SHELLS:
            return -1  # a script file: its arguments are plain
    return -1


def _ssh_command(args: Sequence[str], prog_i: int) -> tuple[int, int]:
    """(index of the remote command string, -1) or (-1, start of the remote argv)."""
    i = prog_i + 1
    n = len(args)
    while i < n:
        a = args[i]
        if a == "--":
            i += 1
            break
        if a.startswith("-") and len(a) > 1:
            i += 2 if a in _SSH_OPT_ARGS else 1
            continue
        break
    i += 1  # the host
    if i >= n:
        return -1, -1
    if i == n - 1:
        return i, -1
    return -1, i


def _commands(s: str) -> list[list[_Word]]:
    """Shell words of s, grouped into simple commands."""
    commands: list[list[_Word]] = []
    words: list[_Word] = []
    word: _Word | None = None
    for m in _PIECE.finditer(s):
        kind = m.lastgroup
        if kind in ("blank", "op", "redir"):
            if word is not None:
                words.append(word)
                word = None
            if kind == "op" and words:
                commands.append(words)
                words = []
            continue
        text = m.group()
        start = m.start()
        if word is None:
            word = _Word(start)
        if kind == "plain":
            if word.map is not None:
                word.map.extend(range(start, start + len(text)))
            word.value += text
        else:
            if word.map is None:
                word.map = list(range(word.start, word.start + len(word.value)))
            if kind == "sq":
                inner = text[1:-1] if len(text) > 1 and text.endswith("'") else text[1:]
                word.map.extend(range(start + 1, start + 1 + len(inner)))
                word.value += inner
            elif kind == "dq":
                end = len(text) - 1 if len(text) > 1 and text.endswith('"') else len(text)
                j = 1
                while j < end:
                    c = text[j]
                    if c == "\\" and j + 1 < end and text[j + 1] in '"\\$`':
                        j += 1
                        c = text[j]
                    word.map.append(start + j)
                    word.value += c
                    j += 1
            else:  # escape
                if len(text) > 1:
                    word.map.append(start + 1)
                    word.value += text[1]
        word.end = m.end()
    if word is not None:
        words.append(word)
    if words:
        commands.append(words)
    return commands


def _requote(s: str, w: _Word, old: str, new: str) -> str:
    """The source text of word w with its value old changed to new: the unchanged head and
    tail are kept as written (quotes included), the changed middle is written as is."""
    p = 0
    limit = min(len(old), len(new))
    while p < limit and old[p] == new[p]:
        p += 1
    q = 0
    while q < limit - p and old[-1 - q] == new[-1 - q]:
        q += 1
    mid = new[p : len(new) - q]
    if w.map is None:
        src_from = w.start + p
        src_to = w.start + len(old) - q
    else:
        src_from = w.map[p] if p < len(old) else w.map[-1] + 1 if w.map else w.start
        src_to = w.map[len(old) - q - 1] + 1 if len(old) - q > 0 else src_from
    return s[w.start : src_from] + mid + s[src_to : w.end]
