// @ts-check
/**
 * runTurn's client tools: a paused turn's call answered by the caller's local function. The
 * answer is always a tool response, never a throw: an unknown tool, arguments that are not a
 * JSON object, or a failing function are told to the model as the tool's result, as the
 * Python client does. (agentd itself never pauses on a call whose arguments are not an
 * object; the check guards the function against what it could not take.)
 */

/**
 * @param {any} call an AgentToolCall
 * @param {Record<string, Function>} tools
 */
export async function callTool(call, tools) {
  const response = (/** @type {string} */ text, /** @type {string|undefined} */ error) => ({
    call_id: call.call_id, tool_name: call.tool_name, content: { text }, error_message: error,
  });
  // What the model reads as the result ("error: ..."), and the response's error_message.
  const refused = (/** @type {string} */ reason) => response(`error: ${reason}`, reason);
  const tool = Object.hasOwn(tools, call.tool_name) ? tools[call.tool_name] : undefined;
  if (!tool) return refused(`no client tool named '${call.tool_name}'`);
  // As the Python client: a tool is called with an object of named arguments, or not at all.
  const args = parseObject(call.arguments || "{}");
  if (args === undefined) return refused("the arguments are not a JSON object");
  try {
    const result = await tool(args);
    return response(typeof result === "string" ? result : JSON.stringify(result));
  } catch (error) {
    return response(`error: ${/** @type {Error} */ (error).message}`, String(error));
  }
}

/** @param {string} text @returns {Record<string, any> | undefined} */
function parseObject(text) {
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

