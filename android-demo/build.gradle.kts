// Plugins are declared once here and applied per module. The Kotlin JVM plugin on this classpath also sets the
// Kotlin version of AGP's built-in Kotlin in the Android modules (gradle/libs.versions.toml: kotlin).
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.android.library) apply false
    alias(libs.plugins.kotlin.jvm) apply false
}
