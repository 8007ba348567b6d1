package dev.pocketvlm.demo.ui

import android.app.Activity
import android.content.ActivityNotFoundException
import android.content.Intent
import android.widget.Toast
import androidx.core.content.FileProvider
import java.io.File

/** Offers a result file to other apps (mail, Drive, Files) through the app's FileProvider (`res/xml/file_paths.xml`). */
object Share {
    fun file(activity: Activity, file: File) {
        val uri = try {
            FileProvider.getUriForFile(activity, "${activity.packageName}.files", file)
        } catch (e: IllegalArgumentException) {
            Toast.makeText(activity, "cannot share ${file.path}: ${e.message}", Toast.LENGTH_LONG).show()
            return
        }
        val send = Intent(Intent.ACTION_SEND).apply {
            type = "application/json"
            putExtra(Intent.EXTRA_STREAM, uri)
            putExtra(Intent.EXTRA_SUBJECT, file.name)
            addFlags(Intent.FLAG_GRANT_READ_URI_PERMISSION)
        }
        try {
            activity.startActivity(Intent.createChooser(send, "Share ${file.name}"))
        } catch (e: ActivityNotFoundException) {
            Toast.makeText(activity, "no app can take the file; it is at ${file.path}", Toast.LENGTH_LONG).show()
        }
    }
}
