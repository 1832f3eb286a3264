"""Face attributes, a second model family beside the embedder: expression (FER2013, 7 classes),
and gender and age (UTKFace). Never used to decide who opens a door.

    python -m training.attributes.prepare fer --source <FER2013 snapshot or folder> --out var/attr/fer
    python -m training.attributes.prepare utkface --out var/attr/utkface
    python -m training.attributes.train expression --data var/attr/fer --out runs/expression
    python -m training.attributes.train gender_age --data var/attr/utkface --out runs/gender_age
    python -m training.attributes.export runs/expression --data var/attr/fer --store model_store --figures docs
    python -m training.attributes.export runs/gender_age --data var/attr/utkface --store model_store --figures docs
    python -m training.attributes.evaluate model_store/<package> --data var/attr/fer --split PrivateTest
    python -m training.attributes.colour runs/expression --data var/attr/utkface

Every photo goes through the service's aligner (``app.vision.align``): the models take the
service's 112x112 RGB crop, and whatever they do to it (grayscale, resizing) is inside the
model, so training and serving crops match by construction.
"""
