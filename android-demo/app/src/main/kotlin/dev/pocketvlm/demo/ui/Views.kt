package dev.pocketvlm.demo.ui

import android.app.Activity
import android.content.Context
import android.graphics.Typeface
import android.text.InputType
import android.view.View
import android.view.ViewGroup
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView

/*
 * The screens are built in code from these few helpers (no layout XML): each Activity is a column of labels,
 * buttons and fields, so the whole UI reads in one place and no resource id can drift from the code.
 */

private fun Context.dp(value: Int): Int = (value * resources.displayMetrics.density).toInt()

/** A scrolling vertical column, set as the Activity's content. */
fun Activity.screen(build: LinearLayout.() -> Unit): LinearLayout {
    val column = LinearLayout(this).apply {
        orientation = LinearLayout.VERTICAL
        val pad = dp(16)
        setPadding(pad, pad, pad, pad)
        build()
    }
    setContentView(ScrollView(this).apply { addView(column) })
    return column
}

private fun LinearLayout.add(view: View): View {
    addView(view, LinearLayout.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, ViewGroup.LayoutParams.WRAP_CONTENT)
        .apply { topMargin = context.dp(6) })
    return view
}

fun LinearLayout.heading(text: String): TextView = label(text).apply {
    textSize = 20f
    setTypeface(typeface, Typeface.BOLD)
}

fun LinearLayout.label(text: String = ""): TextView =
    add(TextView(context).apply { this.text = text; textSize = 15f; setTextIsSelectable(true) }) as TextView

/** Monospaced output (streamed captions, self-test lines, benchmark figures). */
fun LinearLayout.output(): TextView = label().apply { typeface = Typeface.MONOSPACE; textSize = 14f }

fun LinearLayout.button(text: String, onClick: () -> Unit): Button =
    add(Button(context).apply { this.text = text; setOnClickListener { onClick() } }) as Button

fun LinearLayout.field(hint: String, text: String = "", number: Boolean = false): EditText =
    add(EditText(context).apply {
        this.hint = hint
        setText(text)
        inputType = if (number) InputType.TYPE_CLASS_NUMBER
        else InputType.TYPE_CLASS_TEXT or InputType.TYPE_TEXT_FLAG_MULTI_LINE
    }) as EditText

fun LinearLayout.choice(options: List<String>, selected: Int): Spinner =
    add(Spinner(context).apply {
        adapter = ArrayAdapter(context, android.R.layout.simple_spinner_dropdown_item, options)
        setSelection(selected.coerceIn(0, maxOf(options.size - 1, 0)))
    }) as Spinner

fun LinearLayout.image(): ImageView = add(ImageView(context).apply {
    adjustViewBounds = true
    maxHeight = context.dp(320)
    scaleType = ImageView.ScaleType.FIT_CENTER
}) as ImageView

/** A row of buttons side by side. */
fun LinearLayout.buttons(vararg items: Pair<String, () -> Unit>): List<Button> {
    val row = LinearLayout(context).apply { orientation = LinearLayout.HORIZONTAL }
    val made = items.map { (text, onClick) ->
        Button(context).apply { this.text = text; setOnClickListener { onClick() } }.also {
            row.addView(it, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
        }
    }
    add(row)
    return made
}

/** Enables or disables every view while a task runs (the model thread takes one request at a time). */
fun setEnabled(enabled: Boolean, vararg views: View) = views.forEach { it.isEnabled = enabled }
