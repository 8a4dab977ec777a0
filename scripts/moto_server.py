#!/usr/bin/env python3
"""moto's server (SQS + DynamoDB emulator) with DynamoDB requests handled one at a time.

Real DynamoDB applies each single-item write atomically: a conditional UpdateItem or an ADD to
a string set never interleaves with another write of the same item. moto's threaded server has
no such lock, so two concurrent conditional updates can both succeed and two concurrent ADDs can
lose one member. Serialising DynamoDB requests (header X-Amz-Target: DynamoDB_*) restores the
real service's guarantees; every other service (SQS long polls included) stays concurrent.

    python3 scripts/moto_server.py -H 127.0.0.1 -p 4566
"""
import argparse
import signal
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

_DYNAMODB = threading.Lock()


class SerialDynamoDB:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with _DYNAMODB:
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, SerialDynamoDB(app), threaded=True)


if __name__ == "__main__":
    main()
