"""A live agentd for the Node client's test, from agentd's shipped test kit: `agentd serve`
as a subprocess, its model the fake OpenAI server answering by a fixed rule (the Node side
cannot script it call by call). Prints {"grpc_target", "base_url"} as one JSON line once
agentd is SERVING, and stops both when its stdin closes (the test ended or died)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from agentd.testing import start_agentd
from agentd.testing.fake_openai import FakeOpenAIServer, RecordedRequest, Reply, ToolCallSpec


def model(request: RecordedRequest) -> Reply:
    """A tool result is answered with its content; a message naming the weather calls the
    get_weather client tool; one saying "fail the model" gets an HTTP 400; one starting
    "big:" is echoed in one chunk; anything else is echoed, three characters per chunk."""
    last = request.messages[-1]
    if last.get("role") == "tool":
        return Reply(text=f"The tool said: {last['content']}")
    text = last.get("content") if isinstance(last.get("content"), str) else ""
    if "weather" in text:
        return Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"})])
    if "fail the model" in text:
        return Reply(error_status=400, error_message="bad request")
    if text.startswith("big:"):
        return Reply(text=text, chunk_size=len(text))
    return Reply(text=f"echo: {text}", chunk_size=3)


def main() -> None:
    with FakeOpenAIServer(default_reply=model) as fake, tempfile.TemporaryDirectory() as tmp:
        providers = [{"id": "fake", "type": "openai", "base_url": fake.base_url,
                      "models": [{"id": "test-model"}]}]
        agentd = start_agentd(Path(tmp), {"AGENTD_PROVIDERS": json.dumps(providers)}, die_with_parent=True)
        try:
            agentd.wait_serving()
            print(json.dumps({"grpc_target": agentd.grpc_target, "base_url": agentd.base_url}), flush=True)
            sys.stdin.read()
        finally:
            agentd.terminate()


if __name__ == "__main__":
    main()
