"""executorch"""
