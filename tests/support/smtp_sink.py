#!/usr/bin/env python3
"""A tiny SMTP sink for the email connector tests (needs `pip install aiosmtpd`).

    python3 tests/support/smtp_sink.py --port 0 --out DIR [--fail-first N --fail-code 451]

Listens on 127.0.0.1 (port 0: any free port) and prints the bound port on stdout, alone
on the first line. Every message that reaches the end of DATA is written to DIR as
`msg-0001.json`, ... (written to a temporary name, then renamed, so a reader never sees
half a file):

    {"mail_from": "...", "rcpt_tos": ["..."], "data": "<raw message>", "answer": "250 OK"}

The first N messages are answered with `--fail-code` (default 451) instead of 250; they
are recorded too, with that answer. The process exits when its stdin closes, so it never
outlives the test that started it, even if that test is killed.
"""

import argparse
import asyncio
import json
import os
import sys
import threading

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, out, fail_first, fail_code):
        self.out = out
        self.fail_left = fail_first
        self.fail_code = fail_code
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        if self.fail_left > 0:
            self.fail_left -= 1
            answer = f"{self.fail_code} scripted failure, try again later"
        else:
            answer = "250 OK"
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": envelope.original_content.decode("utf-8", "replace"),
            "answer": answer,
        }
        name = os.path.join(self.out, f"msg-{self.count:04d}.json")
        with open(name + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(name + ".tmp", name)
        return answer


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-code", type=int, default=451)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sink = Sink(args.out, args.fail_first, args.fail_code)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.test", enable_SMTPUTF8=True),
        host="127.0.0.1",
        port=args.port,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
