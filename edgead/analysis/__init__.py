"""Exploratory feature analysis of the thesis (`edgead analyze`): which channels of the teacher's feature
levels matter (PCA importance, top p%), what the selected features look like (t-SNE, normal against
anomalous patches) and what a student trained on the top p% channels only detects over a task stream
(feature-selective fine-tuning). Each analysis writes PNGs and a JSON of the numbers behind them."""
