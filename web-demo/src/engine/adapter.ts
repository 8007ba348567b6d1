/** What the generic VLM loop needs from a family's image side (runtime/vlm.py's ADAPTERS), chosen by the
 * manifest's `preprocessing.image.kind`. */

import type { RGBAPixels } from "./image.js";
import type { Tensor } from "./tensor.js";

export interface Processed {
  /** vision-component feeds, by input name */
  feeds: Record<string, Tensor>;
}

export interface VisionAdapter<P extends Processed = Processed> {
  preprocess(image: RGBAPixels): P;
  /** the rendered prompt with the image placeholder expanded to the image's tokens */
  expand(text: string, processed: P): string;
  /** decoder position_ids for the prompt, and the delta decode steps add to their 1-D position */
  positions(inputIds: number[], processed: P | null): { positions: Tensor; delta: number };
  stepPosition(position: number): Tensor;
}
