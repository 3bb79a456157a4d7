// @ts-check
/**
 * A Node.js client for agentd over gRPC (@grpc/grpc-js + @grpc/proto-loader).
 *
 * It loads the contract's .proto files as they are committed (protos/agentd/v1 and the
 * google protos they import, in third_party/protos), the way any consumer in another
 * language would: no generated code. Messages are plain objects with the protos' field
 * names (snake_case), enums as their names, int64 as numbers, and for each oneof a field
 * naming the member that is set (`event.payload.payload === "turn_complete"`).
 *
 *   const client = new AgentdClient("127.0.0.1:50051", { token: "..." });
 *   const { agent_id } = await client.agents.CreateAgent({ agent_config: { model, instructions } });
 *   for await (const event of client.agents.StreamTurn(request, { timeoutMs: 60_000 })) { ... }
 *   const turn = await client.runTurn(agentId, sessionId, "hi", { tools: { get_weather } });
 *
 * Every service is a property (agents, responses, conversations, vector_stores, files, shields,
 * tool_groups, models) with one method per RPC, named as in the protos. A unary method returns
 * a promise; a server-streaming one an EventStream (async iterable of the events themselves).
 * Each takes the request and { timeoutMs, requestId, metadata }. Failures are AgentdError,
 * with the gRPC code, the ErrorInfo reason and the BadRequest field violations.
 */

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

import { callTool } from "./tools.js";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** Where the contract's .proto files are: this repository's protos/ and third_party/protos. */
export const PROTO_ROOTS = [path.join(REPO, "protos"), path.join(REPO, "third_party", "protos")];

const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

/** Service property name -> service name in agentd.v1. */
const SERVICES = {
  agents: "AgentsService",
  responses: "ResponsesService",
  conversations: "ConversationsService",
  vector_stores: "VectorStoresService",
  files: "FilesService",
  shields: "ShieldsService",
  tool_groups: "ToolGroupsService",
  models: "ModelsService",
};

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const REQUEST_ID_KEY = "x-request-id";
/** How many times runTurn re-attaches to its turn after a dropped stream, per stream. */
const REATTACH_ATTEMPTS = 3;

/**
 * @param {string[]} roots
 */
function loadContract(roots) {
  const dir = path.join(roots[0], "agentd", "v1");
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".proto")).map((f) => `agentd/v1/${f}`);
  const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: roots });
  const rpc = new protobuf.Root();
  rpc.resolvePath = (_origin, target) => {
    const found = roots.map((r) => path.join(r, target)).find((p) => fs.existsSync(p));
    return found ?? target;
  };
  rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  return { v1: /** @type {any} */ (grpc.loadPackageDefinition(definition)).agentd.v1, rpc };
}

/** An agentd call that failed: the status code, its message and the details agentd attaches. */
export class AgentdError extends Error {
  /**
   * @param {number} code gRPC status code (grpc.status.NOT_FOUND, ...)
   * @param {string} message
   * @param {{reason?: string|null, domain?: string|null, errorMetadata?: Record<string,string>,
   *          fieldViolations?: {field: string, description: string}[], requestId?: string|null,
   *          turn?: any}} [details]
   */
  constructor(code, message, details = {}) {
    super(`${grpc.status[code] ?? code}: ${message}`);
    this.name = "AgentdError";
    this.code = code;
    this.codeName = grpc.status[code];
    this.details = message;
    /** The ErrorInfo reason (AGENT_NOT_FOUND, ...); null when the status carries none. */
    this.reason = details.reason ?? null;
    this.domain = details.domain ?? null;
    this.errorMetadata = details.errorMetadata ?? {};
    this.fieldViolations = details.fieldViolations ?? [];
    this.requestId = details.requestId ?? null;
    /** For a turn that failed (its turn_failed event): the turn as it ended. */
    this.turn = details.turn ?? null;
  }
}

/**
 * The details of a google.rpc.Status (ErrorInfo, BadRequest).
 * @param {protobuf.Root} rpc
 * @param {any} status a google.rpc.Status, decoded from the trailer or a message field
 *   (a turn_failed event's error): either way its details are Any objects
 */
function statusDetails(rpc, status) {
  const out = { reason: null, domain: null, errorMetadata: {}, fieldViolations: [] };
  for (const any of status.details ?? []) {
    const typeName = String(any.type_url).split("/").pop();
    if (typeName === "google.rpc.ErrorInfo") {
      const info = /** @type {any} */ (rpc.lookupType(typeName).decode(any.value));
      Object.assign(out, { reason: info.reason, domain: info.domain, errorMetadata: info.metadata ?? {} });
    } else if (typeName === "google.rpc.BadRequest") {
      const bad = /** @type {any} */ (rpc.lookupType(typeName).decode(any.value));
      out.fieldViolations.push(...(bad.field_violations ?? []).map(
        (/** @type {any} */ v) => ({ field: v.field, description: v.description })));
    }
  }
  return out;
}

/**
 * @param {protobuf.Root} rpc
 * @param {any} error a grpc-js ServiceError
 */
function errorFromGrpc(rpc, error) {
  const metadata = error.metadata;
  const raw = metadata?.get(STATUS_DETAILS_KEY)?.[0];
  let details = {};
  if (raw) {
    try {
      details = statusDetails(rpc, rpc.lookupType("google.rpc.Status").decode(raw));
    } catch {
      details = {}; // undecodable details: the code and message still tell
    }
  }
  const requestId = metadata?.get(REQUEST_ID_KEY)?.[0]?.toString() ?? null;
  return new AgentdError(error.code ?? grpc.status.UNKNOWN, error.details ?? String(error), {
    ...details, requestId,
  });
}

/**
 * The events of a server stream, as they arrive: `for await (const event of stream)`.
 * `lastSequenceNumber` is the number of the last event delivered: re-attach with
 * `starting_after` set to it (StreamTurnEvents, StreamResponseEvents) to miss nothing.
 */
export class EventStream {
  /**
   * @param {any} call a grpc-js ClientReadableStream
   * @param {boolean} unwrap yield `response.event` (the streams of `{event}` wrappers)
   * @param {protobuf.Root} rpc
   */
  constructor(call, unwrap, rpc) {
    this.call = call;
    this.unwrap = unwrap;
    this.rpc = rpc;
    /** @type {number|null} */
    this.lastSequenceNumber = null;
    this.cancelled = false;
  }

  async *[Symbol.asyncIterator]() {
    try {
      for await (const response of this.call) {
        const item = this.unwrap ? response.event : response;
        this.lastSequenceNumber = item?.sequence_number ?? this.lastSequenceNumber;
        yield item;
      }
    } catch (error) {
      if (this.cancelled && /** @type {any} */ (error).code === grpc.status.CANCELLED) return;
      throw errorFromGrpc(this.rpc, error);
    }
  }

  /** Ends the call (a turn started without `background` is then cancelled by agentd). */
  cancel() {
    this.cancelled = true;
    this.call.cancel();
  }
}

/**
 * @typedef {{timeoutMs?: number, requestId?: string, metadata?: Record<string, string>}} CallOptions
 */

export class AgentdClient {
  /**
   * @param {string} [address] agentd's gRPC address
   * @param {{token?: string, timeoutMs?: number, credentials?: grpc.ChannelCredentials,
   *          protoRoots?: string[]}} [options] token: sent as `authorization: Bearer`;
   *          timeoutMs: the deadline of each unary call that sets none
   */
  constructor(address = "127.0.0.1:50051", options = {}) {
    const { v1, rpc } = loadContract(options.protoRoots ?? PROTO_ROOTS);
    this.address = address;
    this.rpc = rpc;
    this.token = options.token;
    this.timeoutMs = options.timeoutMs;
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    /** @type {any[]} */
    this.stubs = [];
    for (const [property, name] of Object.entries(SERVICES)) {
      // Answers of any size: a session, or a turn's last event, may outgrow gRPC's 4 MiB.
      const stub = new v1[name](address, credentials, { "grpc.max_receive_message_length": -1 });
      this.stubs.push(stub);
      /** @type {any} */ (this)[property] = this.#wrap(stub, v1[name].service);
    }
    /** @type {any} */ this.agents;
    /** @type {any} */ this.responses;
    /** @type {any} */ this.models;
  }

  close() {
    for (const stub of this.stubs) stub.close();
  }

  /**
   * @param {CallOptions} options
   * @param {boolean} unary
   */
  #callArgs(options, unary) {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    if (options.requestId) metadata.set(REQUEST_ID_KEY, options.requestId);
    for (const [key, value] of Object.entries(options.metadata ?? {})) metadata.set(key, value);
    const timeoutMs = options.timeoutMs ?? (unary ? this.timeoutMs : undefined);
    return [metadata, timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + timeoutMs) }];
  }

  /**
   * @param {any} stub
   * @param {Record<string, any>} definition
   */
  #wrap(stub, definition) {
    /** @type {Record<string, Function>} */
    const methods = {};
    for (const [name, method] of Object.entries(definition)) {
      if (method.responseStream) {
        const fields = method.responseType.type.field;
        const unwrap = fields.length === 1 && fields[0].name === "event";
        methods[name] = (/** @type {any} */ request, /** @type {CallOptions} */ options = {}) =>
          new EventStream(stub[name](request, ...this.#callArgs(options, false)), unwrap, this.rpc);
      } else {
        methods[name] = (/** @type {any} */ request, /** @type {CallOptions} */ options = {}) =>
          new Promise((resolve, reject) => {
            stub[name](request, ...this.#callArgs(options, true), (/** @type {any} */ error, /** @type {any} */ response) =>
              error ? reject(errorFromGrpc(this.rpc, error)) : resolve(response));
          });
      }
    }
    return methods;
  }

  /**
   * Streams a turn to its end, calling `tools` (local functions, sync or async, given the
   * call's JSON arguments) each time it pauses on client tools and resuming it with their
   * results. A tool that throws, or is missing, is told to the model as the call's error.
   * A stream dropped (UNAVAILABLE) after the turn began is re-attached where it broke.
   * Resolves with the completed turn; a failed turn rejects with an AgentdError (`turn` set).
   *
   * @param {string} agentId
   * @param {string} sessionId
   * @param {string|any[]} messages a string is one user message
   * @param {{tools?: Record<string, Function>, onEvent?: (event: any) => void, timeoutMs?: number,
   *          background?: boolean}} [options]
   */
  async runTurn(agentId, sessionId, messages, options = {}) {
    const { tools = {}, onEvent, timeoutMs, background = false } = options;
    const input = typeof messages === "string" ? [{ user: { content: { text: messages } } }] : messages;
    const ids = { agent_id: agentId, session_id: sessionId };
    let stream = this.agents.StreamTurn({ ...ids, messages: input, background }, { timeoutMs });
    for (;;) {
      const end = await this.#follow(ids, stream, onEvent, timeoutMs);
      if (end.kind === "turn_complete") return end.turn;
      const tool_responses = [];
      for (const call of end.turn.output_message?.tool_calls ?? []) {
        tool_responses.push(await callTool(call, tools));
      }
      stream = this.agents.StreamResumeTurn(
        { ...ids, turn_id: end.turn.turn_id, tool_responses, background }, { timeoutMs });
    }
  }

  /**
   * @param {{agent_id: string, session_id: string}} ids
   * @param {EventStream} stream
   * @param {((event: any) => void) | undefined} onEvent
   * @param {number | undefined} timeoutMs
   * @returns {Promise<{kind: string, turn: any}>}
   */
  async #follow(ids, stream, onEvent, timeoutMs) {
    let turnId = null;
    for (let attempts = REATTACH_ATTEMPTS; ; attempts--) {
      try {
        for await (const event of stream) {
          turnId = event.turn_id || turnId;
          onEvent?.(event);
          const kind = event.payload.payload;
          if (kind === "turn_failed") {
            const { turn, error } = event.payload.turn_failed;
            throw new AgentdError(error.code, error.message, {
              ...statusDetails(this.rpc, error), turn,
            });
          }
          if (kind === "turn_complete" || kind === "turn_awaiting_input") {
            return { kind, turn: event.payload[kind].turn };
          }
        }
        throw new AgentdError(grpc.status.UNKNOWN, "the stream ended before the turn did");
      } catch (error) {
        const dropped = error instanceof AgentdError && !error.turn && error.code === grpc.status.UNAVAILABLE;
        if (!dropped || turnId === null || attempts === 0) throw error;
        stream = this.agents.StreamTurnEvents(
          { ...ids, turn_id: turnId, starting_after: stream.lastSequenceNumber }, { timeoutMs });
      }
    }
  }
}

export { grpc };
