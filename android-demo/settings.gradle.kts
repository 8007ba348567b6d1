// pocketvlm's Android side in three parts (as mlc-llm's mlc4j / example / chat): the platform-free engine core,
// the backends behind its ComponentSession interface, and the demo app.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // LiteRT and androidx are on Google's Maven only
        mavenCentral() // ONNX Runtime
    }
}

rootProject.name = "pocketvlm-android"

include(":engine") // pure Kotlin/JVM: manifest, tokenizer, preprocessing, generation, golden replay, result file
include(":backend-ort") // ONNX Runtime Android: CPU / XNNPACK / NNAPI for --target onnx, the QNN EP for --target qnn
include(":backend-litert") // LiteRT CompiledModel (GPU with CPU fallback) for --target tflite
include(":app") // the demo: pick a bundle, caption / ask / zero-shot labels, self-test, benchmark
