// `notify`: renders a message from a template; placeholders are {{name}}.
import { log } from "jobhost:plugin/host@0.1.0";

const SCHEMA = {
  type: "object",
  required: ["template", "to", "vars"],
  properties: {
    template: { type: "string", minLength: 1 },
    to: { type: "string", pattern: "^[^@\\s]+@[^@\\s]+$" },
    vars: { type: "object", additionalProperties: { type: ["string", "number"] } },
  },
  additionalProperties: false,
};

export const handler = {
  describe() {
    return { names: ["notify"], schema: JSON.stringify(SCHEMA), version: "0.1.0" };
  },
  handle(job) {
    const { template, to, vars } = JSON.parse(job.payload);
    const missing = [];
    const body = template.replace(/\{\{(\w+)\}\}/g, (_, key) => {
      if (!(key in vars)) missing.push(key);
      return String(vars[key] ?? "");
    });
    if (missing.length > 0) {
      throw { tag: "permanent", val: `template uses unknown variables: ${missing.join(", ")}` };
    }
    log("info", `rendered ${body.length} characters for ${to}`);
    return JSON.stringify({ to, body });
  },
};
