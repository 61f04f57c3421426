// `{{name}}`: a jobhost handler.
import { log } from "jobhost:plugin/host@0.1.0";

const SCHEMA = {
  type: "object",
  required: ["name"],
  properties: { name: { type: "string", minLength: 1 } },
  additionalProperties: false,
};

export const handler = {
  describe() {
    return { names: ["{{name}}"], schema: JSON.stringify(SCHEMA), version: "0.1.0" };
  },
  // The host checked the payload against SCHEMA before calling this. Throw
  // {tag: "permanent", val: "why"} or {tag: "transient", val: {message, retryAfterMs}}.
  handle(job) {
    const { name } = JSON.parse(job.payload);
    if ([...name].length > 32) {
      throw { tag: "permanent", val: "name is longer than 32 characters" };
    }
    log("info", `greeted ${name}`);
    return JSON.stringify({ greeting: `Hello, ${name}!` });
  },
};
