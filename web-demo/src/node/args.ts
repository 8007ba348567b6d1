/** A small argument parser shared by the engine CLI and the browser runner: `--name value`, repeatable flags. */

export interface Parsed { command: string; values: Map<string, string[]>; flags: Set<string> }

export function parseArgs(argv: string[], repeatable: string[], booleans: string[] = []): Parsed {
  const [command = "", ...rest] = argv;
  const values = new Map<string, string[]>(), flags = new Set<string>();
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (!arg.startsWith("--")) throw new Error(`unexpected argument '${arg}'`);
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2);
    if (booleans.includes(name)) {
      flags.add(name);
      continue;
    }
    const value = inline ?? rest[++i];
    if (value === undefined) throw new Error(`--${name} needs a value`);
    if (!repeatable.includes(name) && values.has(name)) throw new Error(`--${name} given twice`);
    values.set(name, [...(values.get(name) ?? []), value]);
  }
  return { command, values, flags };
}

export const one = (p: Parsed, name: string): string | undefined => p.values.get(name)?.[0];
export const many = (p: Parsed, name: string): string[] => p.values.get(name) ?? [];

export function intArg(p: Parsed, name: string, fallback: number): number {
  const raw = one(p, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a whole number, got '${raw}'`);
  return n;
}
