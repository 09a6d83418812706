"""dyrelu-pose: where does Dynamic ReLU help in 2D human pose estimation?"""
__version__ = "0.1.0"
