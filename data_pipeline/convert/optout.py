"""Site opt-outs of URL inputs: the X-Robots-Tag response header (on by default) and robots.txt (--respect-robots).

An opted-out URL is not written; it is recorded with status "opted_out" and the directive or rule that said so.
"""
import threading
import urllib.parse
from typing import Dict, Iterable, Optional, Tuple
from urllib.robotparser import RobotFileParser

from .images import ItemError

# img2dataset's default --disallowed_header_directives: the values by which a site says "not for AI training".
OPTOUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
# A directive scoped to a crawler ("googlebot: noindex") applies to us only under these names: ours, and
# img2dataset's, which sites name to opt out of exactly this kind of dataset tool.
OUR_AGENT_NAMES = ("clipforge", "img2dataset")
STATUS = "opted_out"


def header_optout(values: Iterable[str]) -> Optional[str]:
    """The first opt-out directive in X-Robots-Tag header lines (each "[name:] d1, d2"), or None.

    Matched case-insensitively; a line scoped to another crawler's name is not ours to obey.
    """
    for line in values:
        scope, colon, directives = line.partition(":")
        if not colon or "," in scope:  # "noai, unavailable_after: DATE": the colon is a value's, not a scope's
            scope, directives = "", line
        if scope.strip().lower() not in ("",) + OUR_AGENT_NAMES:
            continue
        for directive in directives.split(","):
            if directive.strip().lower() in OPTOUT_DIRECTIVES:
                return directive.strip().lower()
    return None


def check_header(url: str, values: Iterable[str]) -> None:
    """Raise the "opted_out" ItemError when the response's X-Robots-Tag lines hold an opt-out directive."""
    directive = header_optout(values)
    if directive:
        raise ItemError(STATUS, f"X-Robots-Tag {directive}",
                        f"{url}: the site opted out of AI use (X-Robots-Tag: {directive}); "
                        "--disallow-optout would write it")


def _robots_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))


def _read_rules(robots_url: str, timeout: float, user_agent: str) -> Tuple[RobotFileParser, str]:
    """(rules, why everything is disallowed or ""), as RFC 9309 (and urllib.robotparser.read) say: 401/403 or
    unreachable (5xx, network error) = everything disallowed; another 4xx (no robots.txt) = everything allowed."""
    import requests  # imported here: local-only conversions never need it
    rules = RobotFileParser(robots_url)
    try:
        response = requests.get(robots_url, timeout=timeout, headers={"User-Agent": user_agent})
    except requests.RequestException as error:
        rules.disallow_all = True
        return rules, f"{robots_url} unreachable ({type(error).__name__}), so every path counts as disallowed"
    if response.status_code == 200:
        rules.parse(response.text.splitlines())
    elif response.status_code in (401, 403) or response.status_code >= 500:
        rules.disallow_all = True
        return rules, f"{robots_url} answered {response.status_code}, so every path counts as disallowed"
    else:
        rules.allow_all = True
    return rules, ""


class RobotsCache:
    """robots.txt per host (scheme + host + port), fetched once per host per conversion, shared by its downloads
    (download.py runs the checks in threads); a host's first caller fetches while the others wait for it."""

    def __init__(self):
        self._rules: Dict[str, Tuple[RobotFileParser, str]] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def clear(self) -> None:
        """Forget every host: a new conversion reads robots.txt afresh."""
        with self._guard:
            self._rules.clear()

    def rules(self, url: str, timeout: float, user_agent: str) -> Tuple[RobotFileParser, str]:
        robots_url = _robots_url(url)
        with self._guard:
            lock = self._locks.setdefault(robots_url, threading.Lock())
        with lock:
            if robots_url not in self._rules:
                self._rules[robots_url] = _read_rules(robots_url, timeout, user_agent)
            return self._rules[robots_url]

    def check(self, url: str, timeout: float, user_agent: str) -> None:
        """Raise the "opted_out" ItemError when the host's robots.txt disallows `url` to our user agent."""
        rules, why = self.rules(url, timeout, user_agent)
        if not rules.can_fetch(user_agent, url):
            why = why or f"disallowed by {_robots_url(url)} for user agent {user_agent.split('/')[0]}"
            raise ItemError(STATUS, "robots.txt", f"{url}: {why}; without --respect-robots it would be fetched")


ROBOTS = RobotsCache()


def describe(disallow_optout: bool, respect_robots: bool) -> str:
    """The summary's line on which opt-outs this conversion honoured."""
    header = ("X-Robots-Tag opt-outs NOT honoured (--disallow-optout)" if disallow_optout
              else f"X-Robots-Tag {', '.join(OPTOUT_DIRECTIVES)} honoured")
    robots = "robots.txt checked (--respect-robots)" if respect_robots else "robots.txt not checked"
    return f"{header}; {robots}"
