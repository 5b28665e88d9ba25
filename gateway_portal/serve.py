"""`python -m gateway_portal.serve ARGS`: uvicorn's command line (same arguments), with a
supervisor that stops accepting the moment it is asked to stop.

Why: with `--workers N` uvicorn's parent process keeps its copy of the listening socket open
until every worker has finished draining (up to `--timeout-graceful-shutdown`). The workers
close theirs, but the kernel keeps completing connections on the parent's copy and queues
them where no one accepts them: a balancer's new request to a draining instance hangs until
the parent exits, then fails with a reset instead of being refused at once and sent to
another instance (measured: 1.9 s hang then a read error, against a refusal within 0.15 s
with this supervisor). So the parent closes the listener first, then stops its workers as
uvicorn does; in-flight requests and streams still finish within the drain limit. With one
worker uvicorn runs no supervisor and already closes its listener first.
"""

import importlib
import sys

from uvicorn.supervisors import Multiprocess

# `uvicorn.main` the attribute is the CLI function; the module is what names the supervisor.
uvicorn_cli = importlib.import_module("uvicorn.main")


class DrainingMultiprocess(Multiprocess):
    """uvicorn's supervisor, closing the listening sockets before the workers drain."""

    def _stop_accepting(self) -> None:
        for sock in self.sockets:
            sock.close()

    def handle_term(self) -> None:
        self._stop_accepting()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_accepting()
        super().handle_int()


def main() -> None:
    if uvicorn_cli.Multiprocess is not Multiprocess:
        raise RuntimeError("uvicorn.main no longer names its supervisor Multiprocess")
    uvicorn_cli.Multiprocess = DrainingMultiprocess
    sys.exit(uvicorn_cli.main())


# Workers are spawned: they import this module again as __mp_main__, and must not serve.
if __name__ == "__main__":
    main()
