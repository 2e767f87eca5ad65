#!/usr/bin/env bash
# One-time AWS setup for cluster.yaml, per account: the instance profiles its nodes run under and the image's ECR
# repository (deploy/aws/iam.yaml, a CloudFormation stack), then the image built from this checkout and pushed there.
# Needs the AWS CLI with credentials allowed to create IAM roles, and Docker. Rerun it to push a new image.
#   bash deploy/aws/setup.sh YOUR-BUCKET
set -euo pipefail
cd "$(dirname "$0")/../.."
BUCKET="${1:?usage: bash deploy/aws/setup.sh BUCKET  (the S3 bucket the stages read and write)}"
REGION=us-west-2        # cluster.yaml's provider.region
IMAGE=sas-ray:0.1.0     # cluster.yaml's docker.image
aws cloudformation deploy --region "$REGION" --stack-name sas-ray --template-file deploy/aws/iam.yaml \
  --capabilities CAPABILITY_NAMED_IAM --parameter-overrides "Bucket=$BUCKET"
REGISTRY="$(aws sts get-caller-identity --query Account --output text).dkr.ecr.$REGION.amazonaws.com"
aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$REGISTRY"
docker build -t "$IMAGE" .
docker tag "$IMAGE" "$REGISTRY/$IMAGE"
docker push "$REGISTRY/$IMAGE"
echo "pushed $REGISTRY/$IMAGE; next: ray up cluster.yaml"
