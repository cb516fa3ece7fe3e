"""What a client may read of the server's own text: file system paths taken out.

Error messages from the package name files so that whoever runs the server knows what to fix ("not in
/root/.cache/sam", "could not read /srv/weights/model.pth"). The log keeps them whole; everything sent to a
browser or API client (errors, the status banner, JSON) goes through `redact_paths`, which keeps only the
last part of each absolute path. Paths under `/path/` are the placeholders of our own usage examples.
"""
from __future__ import annotations

import re

# An absolute POSIX path (at least two parts, so "a/b" and "/ " are left alone; inner parts may hold single
# spaces, "/srv/my models/x.pth"), "~/...", a file:// URL's path or a Windows drive path. A web URL's path
# ("https://host/a/b") is preceded by its host name and is left alone; so is "//host".
_PART = r"""[^\s'"`<>()\[\]{},;|/]+"""
_PATH = re.compile(
    rf"""(?:(?<![\w.~/-])|(?<=file://))(?:~?/(?!/)(?!path/)(?:{_PART}(?: {_PART})*/)+{_PART}?|[A-Za-z]:\\[^\s'"`<>|]+)"""
)


def redact_paths(text: str) -> str:
    """`text` with every absolute file path replaced by "…/" and its last part."""
    return _PATH.sub(_last_part, text)


def _last_part(match: re.Match[str]) -> str:
    path = match.group(0)
    trailing = ""
    while path and path[-1] in ".:":  # sentence punctuation after the path
        trailing = path[-1] + trailing
        path = path[:-1]
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return f"…/{name}{trailing}"
