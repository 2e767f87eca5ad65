# syntax=docker/dockerfile:1
# The image every sas-ray cluster node runs (cluster.yaml on AWS, deploy/kuberay/ on Kubernetes): Ray's own GPU image
# of the pinned Ray (constraints-cpu.txt) on Python 3.11, the CUDA torch from PyPI (torch 2.13 wheels carry CUDA 13:
# host driver >= 580), spconv for CUDA 12 (its own CUDA runtime inside; the distill `spconv` backend), and this
# project with its C++ superpoint extension built. Build from the checkout:
#   docker build -t sas-ray:0.1.0 .        (deploy/aws/setup.sh builds it and pushes it to your ECR)
# tests/test_dockerfile.py lints this file and resolves every package it installs against PyPI.
FROM rayproject/ray:2.60.0-py311-cu128

# CUDA torch and sparse convolutions first: the large layer that rarely changes. boto3 is the autoscaler's AWS client.
RUN pip install --no-cache-dir torch==2.13.0 torchvision==0.28.0 spconv-cu126==2.3.8 boto3==1.43.117

WORKDIR /home/ray/sas-ray
COPY --chown=ray:users pyproject.toml setup.py README.md ./
COPY --chown=ray:users csrc csrc
COPY --chown=ray:users sas_ray sas_ray
COPY --chown=ray:users actors actors
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users configs configs
# The project and its remaining dependencies (torch, Ray and spconv above already satisfy theirs); g++ comes with
# the CUDA base. The import check (-P: the installed package, not this source folder) fails the build if the
# extension or the spconv backend is missing.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir . \
    && python -P -c "import sas_ray._segmentator, spconv.pytorch, jobs.cli, torch; print('torch', torch.__version__)"
# Ray starts its processes here: outside the source folder, so `import sas_ray` finds the installed package.
WORKDIR /home/ray
