package dev.pocketvlm.engine.cli

import dev.pocketvlm.engine.Bundle
import dev.pocketvlm.engine.GoldenReplay
import dev.pocketvlm.engine.InputError
import dev.pocketvlm.engine.Json
import dev.pocketvlm.engine.PocketVlmException
import dev.pocketvlm.engine.Rgba
import java.awt.image.BufferedImage
import java.awt.image.ComponentColorModel
import java.awt.image.DataBuffer
import java.awt.image.IndexColorModel
import java.io.ByteArrayInputStream
import java.io.File
import java.io.IOException
import java.io.PrintStream
import javax.imageio.ImageIO
import kotlin.system.exitProcess

/**
 * Replays a bundle's golden record through the engine core on this JVM (no ONNX Runtime here):
 *
 *     java -cp engine.jar:engine-tools.jar:kotlin-stdlib.jar dev.pocketvlm.engine.cli.ReplayMainKt BUNDLE_DIR
 *
 * A desktop tool: it lives in the engine's `tools` source set (src/tools/kotlin), outside the jar the backends and
 * the app depend on, since it reads PNGs with javax.imageio, which Android does not have.
 *
 * Checks the sha256 of every listed file that is present (model files may be left out of a copy made for this
 * tool; they are listed as absent), runs the stages that need no model ([GoldenReplay] without sessions) and prints
 * one JSON object: each stage with its status (passed, failed or not_run) and figures. Exit 0 when every stage that
 * ran passed, 1 when one failed, 2 with one `error:` line when the bundle or its record cannot be used.
 */
fun main(args: Array<String>) {
    exitProcess(replay(args, System.out, System.err))
}

fun replay(args: Array<String>, out: PrintStream, err: PrintStream): Int {
    if (args.size != 1 || args[0].startsWith("-")) {
        err.println("error: usage: ReplayMainKt BUNDLE_DIR (one bundle directory)")
        return 2
    }
    return try {
        val bundle = Bundle.open(File(args[0]))
        val (present, absent) = bundle.listedNames.partition { bundle.exists(it) }
        bundle.verify(present)
        val replay = GoldenReplay(bundle, sessions = null)
        val image = readRgba(bundle.read(replay.record.imageFile), replay.record.imageFile)
        val report = replay.run(image)
        val result = linkedMapOf<String, Any?>("bundle" to bundle.source.label,
            "files" to linkedMapOf("verified" to present, "absent" to absent)) + report.toJson()
        out.println(Json.write(result, 2))
        if (report.passed) 0 else 1
    } catch (e: PocketVlmException) {
        err.println("error: ${e.line}")
        2
    } catch (e: RuntimeException) {
        err.println("error: internal error in the replay (a bug; please report it): $e")
        3
    }
}

/**
 * An image file decoded by javax.imageio into straight-alpha RGBA, the samples as stored (no colour management, as
 * PIL decodes them): 8-bit greyscale, greyscale + alpha, RGB and RGBA, and palette images. Only this tool and the
 * tests decode files; on the phone the app does, with Android's decoder.
 */
fun readRgba(bytes: ByteArray, name: String): Rgba {
    val image: BufferedImage = try {
        ImageIO.read(ByteArrayInputStream(bytes))
    } catch (e: IOException) {
        throw InputError("$name cannot be decoded (${e.message})", "pass a PNG or JPEG file", e)
    } ?: throw InputError("$name is not an image javax.imageio can read", "pass a PNG or JPEG file")
    val w = image.width
    val h = image.height
    val model = image.colorModel
    if (model is IndexColorModel) return Rgba.fromArgb(w, h, image.getRGB(0, 0, w, h, null, 0, w))
    val raster = image.raster
    val bands = raster.numBands
    if (model !is ComponentColorModel || raster.dataBuffer.dataType != DataBuffer.TYPE_BYTE || bands !in 1..4) {
        throw InputError("$name has a pixel layout this tool does not decode (${bands} bands, type " +
            "${raster.dataBuffer.dataType})", "save it as an 8-bit RGB or RGBA PNG")
    }
    val samples = raster.getPixels(0, 0, w, h, null as IntArray?)
    val out = ByteArray(w * h * 4)
    for (i in 0 until w * h) {
        val s = i * bands
        val (r, g, b, a) = when (bands) {
            1 -> listOf(samples[s], samples[s], samples[s], 255)
            2 -> listOf(samples[s], samples[s], samples[s], samples[s + 1])
            3 -> listOf(samples[s], samples[s + 1], samples[s + 2], 255)
            else -> listOf(samples[s], samples[s + 1], samples[s + 2], samples[s + 3])
        }
        out[i * 4] = r.toByte(); out[i * 4 + 1] = g.toByte(); out[i * 4 + 2] = b.toByte(); out[i * 4 + 3] = a.toByte()
    }
    return Rgba(w, h, out)
}
