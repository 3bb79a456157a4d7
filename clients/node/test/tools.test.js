// callTool on its own (src/tools.js): what runTurn answers a paused turn's call with.

import assert from "node:assert/strict";
import { test } from "node:test";

import { callTool } from "../src/tools.js";

const call = (args) => ({ call_id: "c1", tool_name: "get_weather", arguments: args });

test("a call is answered with the function's result, as text", async () => {
  const asked = [];
  const tools = { get_weather: async ({ city }) => { asked.push(city); return { city, sky: "clear" }; } };
  const response = await callTool(call('{"city":"Paris"}'), tools);
  assert.deepEqual(asked, ["Paris"]);
  assert.deepEqual(response, { call_id: "c1", tool_name: "get_weather",
    content: { text: '{"city":"Paris","sky":"clear"}' }, error_message: undefined });
});

test("arguments that are not a JSON object are answered without calling the function", async () => {
  const asked = [];
  const tools = { get_weather: (args) => { asked.push(args); return "called"; } };
  for (const args of ['["Paris"]', "3", "null", '"Paris"', "not json"]) {
    const response = await callTool(call(args), tools);
    assert.equal(response.content.text, "error: the arguments are not a JSON object", args);
    assert.equal(response.error_message, "the arguments are not a JSON object");
  }
  assert.deepEqual(asked, []);
});

test("an unknown tool and a failing function are told to the model", async () => {
  const unknown = await callTool(call("{}"), {});
  assert.equal(unknown.error_message, "no client tool named 'get_weather'");
  const failing = await callTool(call("{}"), { get_weather: () => { throw new Error("no network"); } });
  assert.equal(failing.content.text, "error: no network");
  assert.equal(failing.error_message, "Error: no network");
});
