// LiteRT (CompiledModel, GPU accelerator with a reported CPU fallback) behind the engine core's ComponentSession /
// SessionFactory, for --target tflite bundles. Not compiled where this project is checked: no LiteRT jar there.
plugins {
    alias(libs.plugins.android.library)
}

android {
    namespace = "dev.pocketvlm.backend.litert"
    compileSdk = 36
    defaultConfig {
        minSdk = 28
        consumerProguardFiles("consumer-rules.pro")
        // the LiteRT version the result file names (one source: gradle/libs.versions.toml)
        buildConfigField("String", "LITERT_VERSION", "\"${libs.versions.litert.get()}\"")
    }
    buildFeatures {
        buildConfig = true
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

dependencies {
    api(project(":engine"))
    implementation(libs.litert)
    implementation(libs.litert.gpu) // the GPU accelerator library (a separate artifact from LiteRT 2.3.0)
}
