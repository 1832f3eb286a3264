"""Face attributes, a second model family beside the embedder: expression (FER2013, 7 classes),
and gender and age (UTKFace). Never used to decide who opens a door.

    python -m training.attributes.prepare fer --source <FER2013 snapshot> --out var/attr/fer
    python -m training.attributes.prepare utkface --out var/attr/utkface
    python -m training.attributes.train expression --data var/attr/fer --out runs/expression
    python -m training.attributes.train gender_age --data var/attr/utkface --out runs/gender_age
    python -m training.attributes.export runs/expression --store model_store

Every photo goes through the service's aligner (``app.vision.align``): the models take the
service's 112x112 RGB crop, and whatever they do to it (grayscale, resizing) is inside the
model, so training and serving crops match by construction.
"""
