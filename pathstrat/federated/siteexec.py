"""A long-running executor for a site's ClientApp (SuperNode ``--isolation process``).

With its default ``--isolation subprocess``, a Flower 1.41 SuperNode starts ``flower-superexec``,
which starts a fresh ``flwr-clientapp --token T`` process for **every message**
(``flwr/supercore/superexec/executor/subprocess_executor.py``, ``SubprocessExecutor.launch``);
that process imports Python, flwr, torch and pathstrat, runs one message and exits
(``flwr/supernode/runtime/run_clientapp.py``, ``run_clientapp`` ends in ``flwr_exit``). Flower's
warm executor pools exist only for the Kubernetes executor and only for the agentapp, model and
connector task types (``flwr/supercore/superexec/executor/factory.py``), not for ClientApps.

With ``flower-supernode --isolation process`` the SuperNode starts no executor; an external
process acquires tasks from its Runtime API. This module is that process, long-running: it
imports torch and pathstrat once, acquires each ClientApp task (``AcquireTask``, the call
``flower-superexec`` makes) every ``poll_s`` seconds, and runs it **in this process** with
Flower's own task steps (``pull_task_input``, FAB install, ``ClientApp`` loading by the run's
component reference, ``push_message``, ``push_task_output``, a task heartbeat). The site's feature
store then stays in memory across messages and runs (``pathstrat.federated.client.load_site``).

Run it next to each SuperNode (same machine; the Runtime API is local)::

    flower-supernode --isolation process --port 9094 --superlink ... --node-config ...
    python -m pathstrat.federated.siteexec --runtime-api-address 127.0.0.1:9094 --insecure

Trust: it executes the ClientApp component named by each run's FAB, like ``flwr-clientapp``
does; ``--only-component`` (default ``pathstrat.federated.clientapp:client_app``) refuses runs
whose app names any other component, so a submitted FAB cannot run other code at the site.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from pathstrat.errors import PathstratError

log = logging.getLogger(__name__)

PATHSTRAT_CLIENT_APP = "pathstrat.federated.clientapp:client_app"


class ForeignAppError(PathstratError, RuntimeError):
    """The run's FAB names a ClientApp this executor is not allowed to run."""


def _client(address: str, insecure: bool, certificates: bytes | None, interceptors: list[Any]):
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure, root_certificates=certificates,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())


def pull_task_input(client: Any, backoff_s: float) -> tuple[Any, Any, Any, Any]:
    """Flower's ``run_clientapp.pull_task_input`` (flwr 1.41, Apache-2.0), except that the
    message's objects are retried from ``backoff_s`` (capped at 1 s) instead of from 1 s: the
    SuperNode is still pulling them from the SuperLink when the task starts, so Flower's first
    retry always waited a whole second."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    msgs = client.PullMessages(PullAppMessagesRequest())
    if not msgs.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), msgs.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, initial_backoff=backoff_s, backoff_cap=1.0)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does
    return message, context, run, fab


class SiteExecutor:
    """Acquires a SuperNode's ClientApp tasks and runs them in this process, one at a time."""

    def __init__(self, runtime_api_address: str, insecure: bool = True,
                 root_certificates: str | None = None, poll_s: float = 0.05,
                 only_component: str | None = PATHSTRAT_CLIENT_APP) -> None:
        from flwr.supercore.tls import validate_and_resolve_root_certificates

        self.address = runtime_api_address
        self.insecure = insecure
        self.certificates = validate_and_resolve_root_certificates(root_certificates, insecure)
        self.poll_s = float(poll_s)
        self.only_component = only_component
        self._apps: dict[str, Any] = {}  # FAB hash -> loaded ClientApp
        self.tasks_run = 0

    def preload(self) -> None:
        """Import the ClientApp (torch, pathstrat) before the first task arrives."""
        if self.only_component:
            from flwr.supercore.object_ref import load_app

            load_app(self.only_component, ImportError)

    def _app_for(self, run, fab):
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.client_app import ClientApp, LoadClientAppError
        from flwr.common.config import get_project_config, get_project_dir
        from flwr.supercore.object_ref import load_app

        if fab.hash_str not in self._apps:
            install_from_fab(fab.content, skip_prompt=True)
            app_dir = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
            ref = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]["clientapp"]
            if self.only_component and ref != self.only_component:
                raise ForeignAppError(f"this site executor runs only '{self.only_component}', "
                                      f"but the run's app names ClientApp '{ref}'")
            app = load_app(ref, LoadClientAppError, app_dir)
            if not isinstance(app, ClientApp):
                raise LoadClientAppError(f"Attribute {ref} is not of type {ClientApp}")
            self._apps[fab.hash_str] = app
        return self._apps[fab.hash_str]

    def run_task(self, token: str) -> None:
        """One ClientApp task: the steps of Flower's ``run_clientapp``, without the process exit."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        client = _client(self.address, self.insecure, self.certificates,
                         [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)])
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        t0, t_in, t_app = time.perf_counter(), float("nan"), float("nan")
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client, self.poll_s)
            app = self._app_for(run, fab)
            t_in = time.perf_counter()
            reply = app(message=message, context=context)
            t_app = time.perf_counter() - t_in
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - becomes an error reply, as in flwr-clientapp
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = f"{type(exc)}:<'{exc}'>"
            if isinstance(exc, (LoadClientAppError, ForeignAppError)):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = f"An exception was raised when attempting to load `ClientApp`: {exc}"
            log.error("ClientApp raised an exception", exc_info=exc)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as exc:  # noqa: BLE001
                log.error("failed to push the reply message: %s", exc)
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        self.tasks_run += 1
        log.info("site executor: task %d (%s) %s in %.2f s (input %.2f s, ClientApp %.2f s)",
                 self.tasks_run, message.metadata.message_type if message is not None else "?",
                 "done" if status == SubStatus.COMPLETED else "failed", time.perf_counter() - t0,
                 t_in - t0, t_app)

    def serve(self, max_tasks: int | None = None) -> None:
        """Acquire and run ClientApp tasks until stopped (SIGTERM) or ``max_tasks`` have run."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        acquirer = _client(self.address, self.insecure, self.certificates,
                           [RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        log.info("site executor: acquiring ClientApp tasks from %s every %.2f s",
                 self.address, self.poll_s)
        try:
            while max_tasks is None or self.tasks_run < max_tasks:
                res = acquirer.AcquireTask(AcquireTaskRequest(
                    supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[]))
                if res.HasField("task") and res.token:
                    self.run_task(res.token)
                else:
                    time.sleep(self.poll_s)
        finally:
            acquirer.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m pathstrat.federated.siteexec --runtime-api-address HOST:PORT``."""
    ap = argparse.ArgumentParser(description="Run a site's ClientApp tasks in one long-running "
                                 "process (flower-supernode --isolation process).")
    ap.add_argument("--runtime-api-address", required=True,
                    help="the SuperNode's Runtime API (its --host/--port), e.g. 127.0.0.1:9094")
    ap.add_argument("--insecure", action="store_true", help="plain HTTP to the local Runtime API")
    ap.add_argument("--root-certificates", default=None,
                    help="CA of the SuperNode's Runtime API certificate (its --ssl-ca-certfile)")
    ap.add_argument("--poll-s", type=float, default=0.05, help="seconds between task polls")
    ap.add_argument("--only-component", default=PATHSTRAT_CLIENT_APP,
                    help="the only ClientApp component this site runs ('any': whatever the run "
                         "names, like flwr-clientapp)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per poll
    ex = SiteExecutor(args.runtime_api_address, insecure=args.insecure,
                      root_certificates=args.root_certificates, poll_s=args.poll_s,
                      only_component=None if args.only_component == "any" else args.only_component)
    ex.preload()
    ex.serve()


if __name__ == "__main__":
    main()
