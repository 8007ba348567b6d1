/** Live camera (getUserMedia, rear camera preferred): a preview and a snapshot as RGBA pixels. Needs a secure
 * context (HTTPS or localhost); the file input with capture="environment" works without it. */

import { EngineError } from "../engine/errors.js";
import type { RGBAPixels } from "../engine/image.js";

export function cameraAvailable(): boolean {
  return Boolean(navigator.mediaDevices?.getUserMedia) && globalThis.isSecureContext;
}

export class Camera {
  private stream: MediaStream | null = null;

  constructor(private readonly video: HTMLVideoElement) {}

  async start(): Promise<void> {
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (error) {
      throw new EngineError("input", `the camera did not start (${(error as Error).name})`,
        "allow camera access for this page, or take a photo with the Camera button");
    }
    this.video.srcObject = this.stream;
    await this.video.play();
  }

  snapshot(): RGBAPixels {
    const { videoWidth: w, videoHeight: h } = this.video;
    if (!w || !h) throw new EngineError("input", "the camera has no frame yet", "wait a moment and try again");
    const canvas = new OffscreenCanvas(w, h);
    const context = canvas.getContext("2d")!;
    context.drawImage(this.video, 0, 0);
    const data = context.getImageData(0, 0, w, h);
    return { width: w, height: h, data: data.data };
  }

  stop(): void {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.video.srcObject = null;
  }
}
