"""A small CNN on the 8x8 digits (13,706 parameters), trained with SGD; PyTorch's CPU build.

Parameters travel as the state_dict's tensors, in order, as numpy arrays. ``get_model()`` is the torch module,
which MLflow's pytorch flavour exports (torch.export, given the input example) and serves without this code.
"""

from collections import OrderedDict

import numpy as np
import torch
from data_manager import DataManager, held_out
from flops_utils.ml_repo_templates import ModelManagerTemplate
from torch import nn
from torch.nn import functional

EPOCHS, BATCH, LEARNING_RATE, MOMENTUM = 5, 32, 0.05, 0.9


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = functional.max_pool2d(functional.relu(self.conv1(x)), 2)  # 16 x 4 x 4
        x = functional.max_pool2d(functional.relu(self.conv2(x)), 2)  # 32 x 2 x 2
        return self.fc2(functional.relu(self.fc1(x.flatten(1))))  # logits of 0-9


def images(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 8, 8))


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        torch.manual_seed(0)
        self.model = DigitsCNN()

    def set_model_data(self):
        (x_train, y_train), (x_test, y_test) = DataManager().get_data()
        self.train = torch.utils.data.TensorDataset(images(x_train), torch.from_numpy(y_train))
        self.x_test, self.y_test = images(x_test), torch.from_numpy(y_test)

    def get_model(self):
        return self.model

    def get_model_parameters(self):
        return [value.detach().cpu().numpy().copy() for value in self.model.state_dict().values()]

    def set_model_parameters(self, parameters):
        keys = self.model.state_dict().keys()
        self.model.load_state_dict(OrderedDict((k, torch.as_tensor(np.asarray(v))) for k, v in zip(keys, parameters)),
                                   strict=True)

    def fit_model(self):
        loader = torch.utils.data.DataLoader(self.train, batch_size=BATCH, shuffle=True)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.model.train()
        for _ in range(EPOCHS):
            for x, y in loader:
                optimizer.zero_grad()
                functional.cross_entropy(self.model(x), y).backward()
                optimizer.step()
        return len(self.train)

    def evaluate_model(self):
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.x_test)
            loss = functional.cross_entropy(logits, self.y_test).item()
            accuracy = (logits.argmax(dim=1) == self.y_test).float().mean().item()
        return loss, accuracy, len(self.y_test)

    def get_input_example(self):
        """Five held-out digits (no learner's data), shaped as the model takes them: (5, 1, 8, 8) float32."""
        return images(held_out()[0][:5]).numpy()
