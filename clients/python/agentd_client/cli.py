"""The `agentd` command for people, over gRPC:

    agentd chat [--agent ID] [--session ID] [--model M]   a conversation in the terminal
    agentd agents list | show ID | delete ID
    agentd sessions list AGENT | show AGENT SESSION | delete AGENT SESSION
    agentd responses list | show ID | delete ID
    agentd serve [--config FILE]                          the server (needs the agentd package)

The address and the token come from --address/--token or AGENTD_ADDRESS/AGENTD_TOKEN (the
server accepts these two in its environment and ignores them). `chat` prints the answer's
text as it arrives and each tool call and server-side step on one short line; a turn that
pauses on a client tool asks for the tool's result on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from agentd.v1 import (
    agent_resources_pb2,
    agents_pb2,
    models_pb2,
    response_resource_pb2,
    responses_pb2,
    turn_events_pb2,
)
from agentd_client import DEFAULT_TARGET, Client
from agentd_client.errors import AgentdError, TurnFailedError

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
PREVIEW_CHARS = 80


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _pages(list_call: Callable[[str], Any]) -> Iterator[Any]:
    """Every item of a paged list: `list_call(page_token)` returns one page."""
    token = ""
    while True:
        page = list_call(token)
        yield from page.data
        if not page.has_more or not page.next_page_token:
            return
        token = page.next_page_token


# --------------------------------------------------------------------------- resources


def _agents(client: Client, args, out: TextIO) -> None:
    agents = client.agents
    if args.action == "list":
        for agent in _pages(lambda token: agents.ListAgents(agents_pb2.ListAgentsRequest(page_token=token))):
            config = agent.agent_config
            print(f"{agent.agent_id}\t{agent.created_at.ToJsonString()}\t{config.model}\t"
                  f"{config.name or _short(config.instructions)}", file=out)
    elif args.action == "show":
        print(_json(agents.GetAgent(agents_pb2.GetAgentRequest(agent_id=args.id)).agent), file=out)
    else:
        agents.DeleteAgent(agents_pb2.DeleteAgentRequest(agent_id=args.id))
        print(f"deleted {args.id}", file=out)


def _sessions(client: Client, args, out: TextIO) -> None:
    agents = client.agents
    if args.action == "list":
        def page(token: str):
            request = agents_pb2.ListSessionsRequest(agent_id=args.agent_id, page_token=token)
            return agents.ListSessions(request)
        for session in _pages(page):
            print(f"{session.session_id}\t{session.started_at.ToJsonString()}\t{session.session_name}",
                  file=out)
    elif args.action == "show":
        request = agents_pb2.GetSessionRequest(agent_id=args.agent_id, session_id=args.session_id)
        print(_json(agents.GetSession(request).session), file=out)
    else:
        request = agents_pb2.DeleteSessionRequest(agent_id=args.agent_id, session_id=args.session_id)
        agents.DeleteSession(request)
        print(f"deleted {args.session_id}", file=out)


def _responses(client: Client, args, out: TextIO) -> None:
    responses = client.responses
    if args.action == "list":
        def page(token: str):
            return responses.ListResponses(responses_pb2.ListResponsesRequest(page_token=token))
        for item in _pages(page):
            response = item.response
            status = response_resource_pb2.ResponseStatus.Name(response.status)
            status = status.removeprefix("RESPONSE_STATUS_").lower()
            print(f"{response.id}\t{response.created_at}\t{response.model}\t{status}", file=out)
    elif args.action == "show":
        print(_json(responses.GetResponse(responses_pb2.GetResponseRequest(response_id=args.id)).response),
              file=out)
    else:
        responses.DeleteResponse(responses_pb2.DeleteResponseRequest(response_id=args.id))
        print(f"deleted {args.id}", file=out)


# --------------------------------------------------------------------------- chat


class _AskTheUser(Mapping[str, Callable[..., str]]):
    """Client tools answered on the terminal: any tool name maps to a prompt for its result."""

    def __init__(self, read_line: Callable[[str], str | None], out: TextIO):
        self._read_line, self._out = read_line, out

    def __getitem__(self, name: str) -> Callable[..., str]:
        def ask(**arguments: Any) -> str:
            answer = self._read_line(f"[client tool {name}({json.dumps(arguments)})] result> ")
            return answer if answer is not None else ""
        return ask

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


class _Printer:
    """Shows a turn's events compactly: text as it arrives, one line per tool call or step."""

    def __init__(self, out: TextIO):
        self._out = out
        self._mid_line = False

    def _end_text(self) -> None:
        if self._mid_line:
            print(file=self._out, flush=True)
            self._mid_line = False

    def _line(self, text: str) -> None:
        self._end_text()
        print(text, file=self._out, flush=True)

    def __call__(self, event: turn_events_pb2.TurnEvent) -> None:
        payload = event.payload
        kind = payload.WhichOneof("payload")
        if kind == "step_progress" and payload.step_progress.delta.HasField("text"):
            self._out.write(payload.step_progress.delta.text.text)
            self._out.flush()
            self._mid_line = True
        elif kind == "step_complete":
            self._step(payload.step_complete.step_details)
        elif kind in ("turn_complete", "turn_failed", "turn_awaiting_input"):
            self._end_text()

    def _step(self, step: agent_resources_pb2.AgentStep) -> None:
        which = step.WhichOneof("step")
        if which == "inference":
            for call in step.inference.model_response.tool_calls:
                self._line(f"  → {call.tool_name}({_short(call.arguments)})")
        elif which == "tool_execution":
            for response in step.tool_execution.tool_responses:
                self._line(f"  ← {response.tool_name}: {_short(_content_text(response.content))}")
        elif which:
            self._line(f"  [{which}]")


def _content_text(content) -> str:
    which = content.WhichOneof("content")
    if which == "text":
        return content.text
    items = [content.item] if which == "item" else list(content.items.items) if which == "items" else []
    return " ".join(i.text.text for i in items if i.HasField("text"))


def _default_model(client: Client) -> str:
    models = client.models.ListModels(models_pb2.ListModelsRequest()).data
    language = (models_pb2.MODEL_TYPE_LLM, models_pb2.MODEL_TYPE_UNSPECIFIED)
    llms = [m.id for m in models if m.model_type in language]
    if not llms:
        raise SystemExit("agentd: the server serves no language model; configure a provider")
    return llms[0]


def _chat(client: Client, args, out: TextIO) -> None:
    interactive = sys.stdin.isatty()

    def read_line(prompt: str) -> str | None:
        if interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    agent_id = args.agent
    if not agent_id:
        config = agent_resources_pb2.AgentConfig(model=args.model or _default_model(client),
                                                 instructions=args.instructions)
        agent_id = client.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent_config=config)).agent_id
    session_id = args.session or client.agents.CreateSession(
        agents_pb2.CreateSessionRequest(agent_id=agent_id, session_name="agentd chat")).session_id
    print(f"agent {agent_id}, session {session_id} (end with Ctrl-D)", file=out, flush=True)
    printer, tools = _Printer(out), _AskTheUser(read_line, out)
    while (line := read_line("you> ")) is not None:
        if not line.strip():
            continue
        try:
            client.run_turn(agent_id, session_id, line, tools=tools, on_event=printer)
        except TurnFailedError as e:  # the conversation goes on; the session keeps the failed turn
            print(f"agentd: the turn failed: {_error_line(e)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line


def _error_line(error: AgentdError) -> str:
    reason = f" {error.reason}" if error.reason else ""
    return f"{error.code.name}{reason}: {error.message}"



def _serve(argv: list[str]) -> int:
    try:
        from agentd.cli import main as serve_main
    except ImportError:
        print("agentd: `agentd serve` runs the server, which is not installed here (pip install agentd)",
              file=sys.stderr)
        return 2
    return serve_main(argv)


def _parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--address", default=os.environ.get("AGENTD_ADDRESS", DEFAULT_TARGET),
                            help="agentd's gRPC address (default: $AGENTD_ADDRESS or %(default)s)")
    connection.add_argument("--token", default=os.environ.get("AGENTD_TOKEN"),
                            help="bearer token (default: $AGENTD_TOKEN)")
    connection.add_argument("--timeout", type=float, default=30.0,
                            help="deadline of each call that is not a stream, in seconds (default: 30)")
    parser = argparse.ArgumentParser(prog="agentd", description="Runs LLM agents over gRPC; talks to one.")
    version = f"agentd-client {metadata.version('agentd-client')}"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC server and the HTTP gateway (agentd serve --help)",
                   add_help=False)
    chat = sub.add_parser("chat", parents=[connection], help="chat with an agent in the terminal")
    chat.add_argument("--agent", help="the agent to talk to (default: a new one)")
    chat.add_argument("--session", help="a session of that agent to continue (default: a new one)")
    chat.add_argument("--model", help="the new agent's model (default: the server's first)")
    chat.add_argument("--instructions", default=DEFAULT_INSTRUCTIONS, help="the new agent's instructions")
    chat.set_defaults(run=_chat)
    for name, run, ids in (("agents", _agents, ["id"]), ("responses", _responses, ["id"]),
                           ("sessions", _sessions, None)):
        command = sub.add_parser(name, help=f"list, show or delete {name}")
        actions = command.add_subparsers(dest="action", required=True)
        for action in ("list", "show", "delete"):
            p = actions.add_parser(action, parents=[connection])
            if ids is None:  # sessions are named by their agent and their own id
                p.add_argument("agent_id")
                if action != "list":
                    p.add_argument("session_id")
            elif action != "list":
                p.add_argument("id")
            p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return _serve(argv)
    args = _parser().parse_args(argv)
    try:
        with Client(args.address, token=args.token, timeout=args.timeout) as client:
            args.run(client, args, sys.stdout)
    except AgentdError as e:
        print(f"agentd: {_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
