import torch.nn as nn

# the model, built when the file is imported
model = nn.Sequential(
    nn.Flatten(),
    nn.Linear(3 * 8 * 8, 32),
    nn.ReLU(),
    nn.Linear(32, 10),
)
