package dev.pocketvlm.demo

import android.app.Application
import android.os.Handler
import android.os.Looper
import dev.pocketvlm.demo.model.ModelHost
import dev.pocketvlm.demo.platform.BundleStore

/**
 * The process's one [ModelHost] (the loaded bundle outlives the screens that use it, and the model thread is
 * shared) and [BundleStore]. Activities reach them through [of].
 */
class PocketVlmApp : Application() {
    lateinit var host: ModelHost
        private set
    lateinit var store: BundleStore
        private set

    override fun onCreate() {
        super.onCreate()
        val main = Handler(Looper.getMainLooper())
        host = ModelHost { main.post(it) }
        store = BundleStore(this)
    }

    companion object {
        fun of(activity: android.app.Activity): PocketVlmApp = activity.application as PocketVlmApp
    }
}
