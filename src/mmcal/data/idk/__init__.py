"""IDK ("I don't know") data sets: items whose honest answer can be to admit not knowing.

One module per builder: ``fmnist`` (held-out Fashion-MNIST classes, offline), ``dated_news`` (real
news published after a model's cutoff), ``llava_json`` (the released LLaVA-conversation format);
``common`` holds what they share (IDK option placement, the calib/test split, the item metadata).
"""
