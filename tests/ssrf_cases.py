"""Host spellings and a scripted DNS resolver shared by the SSRF unit and integration tests."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

# Every spelling below means this machine. The first group only becomes 127.0.0.1 after the
# URL library's IDNA/UTS-46 mapping, which the guard used not to apply (the reported bypass).
UNICODE_LOOPBACK = [
    "127\u30020\u30020\u30021",  # 127。0。0。1 (ideographic full stop)
    "127\uff0e0\uff0e0\uff0e1",  # 127．0．0．1 (fullwidth full stop)
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # １２７.０.０.１ (fullwidth digits)
    "127\uff610\uff610\uff611",  # halfwidth ideographic full stop
    "\u2460\u2461\u2466.0.0.\u2460",  # ①②⑦.0.0.①
    "\U0001ccf1\U0001ccf2\U0001ccf7.0.0.\U0001ccf1",  # outlined digits U+1CCF0..U+1CCF9
    "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",  # ｌｏｃａｌｈｏｓｔ
]
ASCII_LOOPBACK = [
    "127.0.0.1",
    "127.0.0.1.",
    "127.0.0.1..",
    "127.1",
    "0",
    "0.0.0.0",
    "0x7f000001",
    "0x7f.1",
    "2130706433",
    "0177.0.0.1",
    "017700000001",
    "[::]",
    "[::1]",
    "[::1%25lo]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "LocalHost..",
    "api.localhost",
]
LOOPBACK_SPELLINGS = UNICODE_LOOPBACK + ASCII_LOOPBACK


class StubResolver(AbstractResolver):
    """DNS answers scripted per call (the last answer repeats); ``None`` means NXDOMAIN."""

    def __init__(self, *answers: list[str] | None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in answer
        ]

    async def close(self) -> None:
        pass
