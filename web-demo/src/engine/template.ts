/** The bundle's chat template rendered with @huggingface/jinja (trim_blocks + lstrip_blocks, as runtime/vlm.py's
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)). */

import { Template } from "@huggingface/jinja";

import { EngineError } from "./errors.js";

export class ChatTemplate {
  private readonly template: Template;

  constructor(source: string) {
    try {
      this.template = new Template(source);
    } catch (error) {
      throw new EngineError("bundle", `the bundle's chat template does not parse: ${String(error)}`,
        "re-export with a valid chat template");
    }
  }

  /** One user turn: [{type: image}?, {type: text, text: prompt}], with the generation prompt added. */
  render(prompt: string, withImage = true): string {
    const content: Record<string, string>[] = withImage ? [{ type: "image" }] : [];
    content.push({ type: "text", text: prompt });
    try {
      return this.template.render({ messages: [{ role: "user", content }], add_generation_prompt: true });
    } catch (error) {
      throw new EngineError("bundle", `the bundle's chat template failed: ${String(error)}`,
        "re-export with a valid chat template");
    }
  }
}
