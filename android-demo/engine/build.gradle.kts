// The engine core: pure Kotlin/JVM (no android.*, no javax.imageio), shared by both backends and the app. Its JUnit
// tests compare it with the Python runtime through fixtures the Python side writes (tests/jvm_fixtures); point them
// at a directory of written fixtures with -Ppocketvlm.fixtures=DIR (or POCKETVLM_FIXTURES). The project's CI runs
// the same tests without Gradle (tests/test_android.py through tests/jvm_harness.py).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

// Java 17 bytecode from whatever JDK (17 or newer) runs Gradle; no toolchain download
java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_17)
    }
}

// The desktop tools (dev.pocketvlm.engine.cli: the golden replay on a JVM, which reads PNGs with javax.imageio, absent
// on Android) are their own source set, src/tools/kotlin, built on the core: the jar the backends and the app depend
// on is the core alone. The tests use the tools (GoldenTest runs the replay and decodes golden.png with them).
sourceSets {
    val tools by creating {
        compileClasspath += main.get().output
        runtimeClasspath += main.get().output
    }
    test {
        compileClasspath += tools.output
        runtimeClasspath += tools.output
    }
}
configurations["toolsImplementation"].extendsFrom(configurations.implementation.get())
configurations["toolsRuntimeOnly"].extendsFrom(configurations.runtimeOnly.get())

dependencies {
    testImplementation(libs.kotlin.test.junit5)
    testImplementation(platform(libs.junit.bom))
    testRuntimeOnly(libs.junit.jupiter.engine)
    testRuntimeOnly(libs.junit.platform.launcher)
}

tasks.test {
    useJUnitPlatform()
    jvmArgs("-Xss8m")
    val fixtures = providers.gradleProperty("pocketvlm.fixtures").orElse(providers.environmentVariable("POCKETVLM_FIXTURES"))
    if (fixtures.isPresent) systemProperty("pocketvlm.fixtures", fixtures.get())
}
