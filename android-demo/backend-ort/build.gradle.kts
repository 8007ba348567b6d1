// ONNX Runtime Android behind the engine core's ComponentSession / SessionFactory. The ORT API is compileOnly: the
// app links the ONNX Runtime build it ships (onnxruntime-android, or onnxruntime-android-qnn with
// -Ppocketvlm.qnn=true; both have the same Java API). No android.* import here, so the project's CI compiles every
// source of this module against onnxruntime.aar's classes.jar (tests/jvm_harness.py compile_ort_backend).
plugins {
    alias(libs.plugins.android.library)
}

android {
    namespace = "dev.pocketvlm.backend.ort"
    compileSdk = 36
    defaultConfig {
        minSdk = 28
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

dependencies {
    api(project(":engine"))
    compileOnly(libs.onnxruntime.android)
}
