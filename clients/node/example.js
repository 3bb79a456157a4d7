// A turn with a client tool from Node: `node example.js [address]` against a running agentd
// (`agentd serve`; the address defaults to $AGENTD_ADDRESS or 127.0.0.1:50051).

import { AgentdClient } from "./src/index.js";

const address = process.argv[2] ?? process.env.AGENTD_ADDRESS ?? "127.0.0.1:50051";
const client = new AgentdClient(address, { token: process.env.AGENTD_TOKEN, timeoutMs: 10_000 });

const getWeatherTool = {
  name: "get_weather",
  description: "The current weather in a city.",
  input_schema: {
    fields: {
      type: { stringValue: "object" },
      properties: { structValue: { fields: { city: { structValue: { fields: { type: { stringValue: "string" } } } } } } },
    },
  },
};

try {
  const { data: models } = await client.models.ListModels({});
  const model = models.find((m) => m.model_type !== "MODEL_TYPE_EMBEDDING")?.id;
  if (!model) throw new Error("agentd serves no language model: configure a provider");
  const { agent_id } = await client.agents.CreateAgent({
    agent_config: { model, instructions: "Answer briefly. Use get_weather for the weather.", client_tools: [getWeatherTool] },
  });
  const { session_id } = await client.agents.CreateSession({ agent_id, session_name: "node example" });
  const turn = await client.runTurn(agent_id, session_id, "What is the weather in Paris?", {
    tools: { get_weather: ({ city }) => ({ city, sky: "sunny", celsius: 21 }) },
    onEvent: (event) => {
      const progress = event.payload.step_progress;
      if (event.payload.payload === "step_progress" && progress.delta.delta === "text") {
        process.stdout.write(progress.delta.text.text);
      }
    },
  });
  process.stdout.write(`\n(${turn.turn_id}: ${turn.status})\n`);
} catch (error) {
  console.error(`${error.codeName ?? ""} ${error.reason ?? ""} ${error.message}`.trim());
  process.exitCode = 1;
} finally {
  client.close();
}
