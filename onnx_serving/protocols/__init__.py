"""What goes over the wire: the native JSON contract, the Open Inference Protocol (V2), files (CSV
and .npy), images, the plain HTTP routes and the OpenAPI document.
"""
