"""Test and benchmark support: PyTorch twins of the models (`torch_reference`).

Not used by the library; imports torch lazily, inside its builders.
"""
