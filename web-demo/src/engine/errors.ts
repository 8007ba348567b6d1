/** Typed errors: every one names the problem and the fix in one line, like the Python runtime's PocketVLMError. */

export type ErrorKind =
  | "bundle" // missing, incomplete or malformed bundle
  | "integrity" // a file does not match its sha256
  | "version" // a newer schema_version than this engine understands
  | "target" // a bundle target the browser cannot run (tflite, coreml)
  | "too_large" // the bundle will not fit this device
  | "image" // not an image, corrupt
  | "image_too_large" // over the pixel limit
  | "input" // bad prompt, labels, options
  | "golden"; // the bundle carries no (usable) golden record

export class EngineError extends Error {
  readonly kind: ErrorKind;
  readonly problem: string;
  readonly fix: string;

  constructor(kind: ErrorKind, problem: string, fix: string) {
    super(`${problem} (fix: ${fix})`);
    this.name = "EngineError";
    this.kind = kind;
    this.problem = problem;
    this.fix = fix;
  }

  /** `<problem> (fix: <hint>)` on one line, as the Python CLI prints it. */
  oneLine(): string {
    return this.message.split(/\s+/).join(" ");
  }
}

export function isEngineError(value: unknown): value is EngineError {
  return value instanceof EngineError;
}
