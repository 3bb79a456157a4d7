// The Node client against a live agentd (`agentd serve` with the fake model, started through
// agentd's test kit by test/live_agentd.py), loading the repository's .proto files as committed.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { AgentdClient, AgentdError, grpc } from "../src/index.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.AGENTD_PYTHON ?? path.resolve(HERE, "../../../.venv/bin/python");

let server;
let client;

before(async () => {
  server = spawn(PYTHON, [path.join(HERE, "live_agentd.py")], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = readline.createInterface({ input: server.stdout });
  const first = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    server.once("exit", (code) => reject(new Error(`live_agentd.py exited with ${code} (see its log above)`)));
  });
  client = new AgentdClient(JSON.parse(first).grpc_target, { timeoutMs: 10_000 });
});

after(async () => {
  client?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.stdin.end();
    await exited;
  }
});

async function newSession() {
  const get_weather = {
    name: "get_weather",
    description: "the weather in a city",
    input_schema: { fields: { type: { stringValue: "object" } } },
  };
  const { agent_id } = await client.agents.CreateAgent({
    agent_config: { model: "test-model", instructions: "Be brief.", client_tools: [get_weather] },
  });
  const { session_id } = await client.agents.CreateSession({ agent_id, session_name: "node" });
  return { agent_id, session_id };
}

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

const user = (text) => ({ user: { content: { text } } });

test("agent and session create, get and list", async () => {
  const { agent_id, session_id } = await newSession();
  assert.match(agent_id, /^agent_/);
  assert.match(session_id, /^sess_/);
  const { agent } = await client.agents.GetAgent({ agent_id }, { requestId: "node-get-1" });
  assert.equal(agent.agent_config.model, "test-model");
  const { data } = await client.agents.ListSessions({ agent_id });
  assert.deepEqual(data.map((s) => s.session_name), ["node"]);
});

test("a streamed turn pauses on a client tool and is resumed with its result", async () => {
  const ids = await newSession();
  const first = await collect(client.agents.StreamTurn({ ...ids, messages: [user("weather in Paris?")] }));
  const paused = first.at(-1);
  assert.equal(paused.payload.payload, "turn_awaiting_input");
  const [call] = paused.payload.turn_awaiting_input.turn.output_message.tool_calls;
  assert.equal(call.tool_name, "get_weather");
  assert.deepEqual(JSON.parse(call.arguments), { city: "Paris" });
  const rest = await collect(client.agents.StreamResumeTurn({
    ...ids, turn_id: paused.turn_id,
    tool_responses: [{ call_id: call.call_id, tool_name: call.tool_name, content: { text: "sunny" } }],
  }));
  const done = rest.at(-1);
  assert.equal(done.payload.payload, "turn_complete");
  assert.equal(done.payload.turn_complete.turn.output_message.content.text, "The tool said: sunny");
  // One turn, one dense sequence across the resume.
  assert.deepEqual([...first, ...rest].map((e) => e.sequence_number), [...Array(first.length + rest.length).keys()]);
});

test("runTurn calls local functions as client tools until the turn completes", async () => {
  const { agent_id, session_id } = await newSession();
  const asked = [];
  const turn = await client.runTurn(agent_id, session_id, "what is the weather?", {
    tools: { get_weather: async ({ city }) => { asked.push(city); return { city, sky: "clear" }; } },
  });
  assert.deepEqual(asked, ["Paris"]);
  assert.equal(turn.status, "TURN_STATUS_COMPLETED");
  assert.equal(turn.output_message.content.text, 'The tool said: {"city":"Paris","sky":"clear"}');
});

test("a turn whose last event is past gRPC's default 4 MiB is received whole", async () => {
  // The last event carries the input and the answer: 2.5 MB answered in kind is 7.5 MB.
  const { agent_id, session_id } = await newSession();
  const text = "big:" + "z".repeat(2_500_000);
  const { turn } = await client.agents.CreateTurn({ agent_id, session_id, messages: [user(text)] });
  assert.equal(turn.status, "TURN_STATUS_COMPLETED");
  assert.equal(turn.output_message.content.text, text);
});

test("runTurn rejects a failed turn with the turn and its ErrorInfo reason", async () => {
  const { agent_id, session_id } = await newSession();
  await assert.rejects(client.runTurn(agent_id, session_id, "fail the model"), (error) => {
    assert.ok(error instanceof AgentdError);
    assert.equal(error.turn.status, "TURN_STATUS_FAILED");
    assert.equal(error.reason, "MODEL_REJECTED_REQUEST"); // the model answered HTTP 400
    return true;
  });
});

test("a dropped stream is re-attached from its last event and misses nothing", async () => {
  const ids = await newSession();
  // background: the turn outlives the stream that started it.
  const stream = client.agents.StreamTurn({ ...ids, messages: [user("a fairly long message to echo")], background: true });
  const seen = [];
  for await (const event of stream) {
    seen.push(event);
    if (seen.length === 3) break; // leaving the loop ends the call
  }
  assert.equal(stream.lastSequenceNumber, 2);
  const rest = await collect(client.agents.StreamTurnEvents({
    ...ids, turn_id: seen[0].turn_id, starting_after: stream.lastSequenceNumber,
  }));
  const numbers = [...seen, ...rest].map((e) => e.sequence_number);
  assert.deepEqual(numbers, [...Array(numbers.length).keys()]);
  const end = rest.at(-1).payload;
  assert.equal(end.payload, "turn_complete");
  assert.equal(end.turn_complete.turn.output_message.content.text, "echo: a fairly long message to echo");
});

test("errors carry the status code and the ErrorInfo reason", async () => {
  await assert.rejects(client.agents.GetAgent({ agent_id: "agent_missing" }, { requestId: "node-err-1" }), (error) => {
    assert.ok(error instanceof AgentdError);
    assert.equal(error.code, grpc.status.NOT_FOUND);
    assert.equal(error.reason, "AGENT_NOT_FOUND");
    assert.equal(error.domain, "agentd.dev");
    assert.equal(error.requestId, "node-err-1");
    return true;
  });
  await assert.rejects(client.agents.CreateAgent({ agent_config: { instructions: "no model" } }), (error) => {
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.ok(error.fieldViolations.some((v) => v.field === "agent_config.model"));
    return true;
  });
});

test("a response streams its events", async (t) => {
  const stream = client.responses.StreamResponse({ model: "test-model", input: { text: "hi" } }, { timeoutMs: 30_000 });
  let events;
  try {
    events = await collect(stream);
  } catch (error) {
    if (error instanceof AgentdError && error.code === grpc.status.UNIMPLEMENTED && error.reason === "NOT_AVAILABLE_YET") {
      t.skip("this agentd does not serve the Responses API yet (UNIMPLEMENTED NOT_AVAILABLE_YET)");
      return;
    }
    throw error;
  }
  assert.equal(events[0].event, "created");
  assert.equal(events.at(-1).event, "completed");
  const numbers = events.map((e) => e.sequence_number);
  assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b));
});

test("the example runs a turn with its client tool", async () => {
  const example = spawn(process.execPath, [path.resolve(HERE, "../example.js"), client.address],
    { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  example.stdout.on("data", (chunk) => { out += chunk; });
  example.stderr.on("data", (chunk) => { err += chunk; });
  const code = await new Promise((resolve) => example.once("exit", resolve));
  assert.equal(code, 0, err);
  assert.match(out, /^The tool said: \{"city":"Paris","sky":"sunny","celsius":21\}\n\(turn_\w+: TURN_STATUS_COMPLETED\)\n$/);
});
