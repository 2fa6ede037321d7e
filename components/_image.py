"""The one project image every component runs from (a setting: ``MLOPS_IMAGE``)."""

from mlops.settings import component_image

# install_kfp_package=False: the image already has kfp and the project; nothing is
# pip-installed when a step starts.
COMPONENT_OPTIONS = {"base_image": component_image(), "install_kfp_package": False}
