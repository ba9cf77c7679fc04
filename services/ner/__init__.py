"""Named-entity recognition: spaCy pipelines and local Hugging Face token classifiers."""
