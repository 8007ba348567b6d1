// The demo app. Which ONNX Runtime it links is one switch (gradle.properties pocketvlm.qnn, or
// -Ppocketvlm.qnn=true): onnxruntime-android (CPU / XNNPACK / NNAPI) or onnxruntime-android-qnn (the same API with
// Qualcomm's QNN EP and HTP libraries, for --target qnn bundles). Not built where this project is checked (no
// Android SDK there); see ../README.md.
plugins {
    alias(libs.plugins.android.application)
}

val qnn = providers.gradleProperty("pocketvlm.qnn").map { it.toBoolean() }.getOrElse(false)

android {
    namespace = "dev.pocketvlm.demo"
    compileSdk = 36
    defaultConfig {
        applicationId = "dev.pocketvlm.demo"
        minSdk = 28 // ImageDecoder (EXIF orientation applied), and the backends' own minimums (24)
        targetSdk = 36
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64") // phones, and the emulator for the CPU paths
        }
    }
    buildFeatures {
        buildConfig = true
    }
    buildTypes {
        release {
            isMinifyEnabled = true
            // no rules of its own: the engine core has nothing R8 must keep; the backends and ONNX Runtime bring theirs
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"))
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    packaging {
        jniLibs {
            // the HTP's skel libraries are loaded by the DSP from a real path (ADSP_LIBRARY_PATH): QNN builds keep
            // native libraries extracted on disk
            useLegacyPackaging = qnn
        }
    }
}

dependencies {
    implementation(project(":engine"))
    implementation(project(":backend-ort"))
    implementation(project(":backend-litert"))
    implementation(if (qnn) libs.onnxruntime.android.qnn else libs.onnxruntime.android)
    implementation(libs.androidx.activity)
    implementation(libs.androidx.core)
}
