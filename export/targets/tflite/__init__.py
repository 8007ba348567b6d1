"""tflite"""
