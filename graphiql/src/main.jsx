// The GraphiQL page that emporium serves at `GET /graphql` (see ../README.md).
// Everything it loads comes from its own origin: the bundle under /graphiql/, the
// schema by introspection of /graphql, subscriptions over graphql-ws at /graphql/ws.
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { GraphiQL } from 'graphiql';
// Monaco's editor worker and the JSON and GraphQL language workers, bundled by Vite.
import 'graphiql/setup-workers/vite';
import 'graphiql/style.css';
import { createClient } from 'graphql-ws';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import './style.css';

const DEFAULT_QUERY = `# Welcome to Emporium. Run this with the ▶ button
# (or Ctrl-Enter). The book icon at the top left
# opens the docs; Ctrl-Space completes fields.
# Writes need a token: under Headers below, put
# {"Authorization": "Bearer <token>"}
query ProductsWithOffers {
  products(first: 5) {
    totalCount
    nodes {
      id
      name
      registration {
        status
      }
      lowestPrice
      offers {
        price
        itemsInStock
      }
      priceTrend {
        prices
        changePercent
      }
    }
    pageInfo {
      hasNextPage
      endCursor
    }
  }
}

# Live price changes of one product: uncomment,
# put an id from above, and run it.
# subscription PriceChanges {
#   offerPriceChanged(productId: "1") {
#     offerId previousPrice price at
#   }
# }
`;

// The headers of the latest request, from the headers editor. The server reads the
// `Authorization` of a graphql-ws connection from its `connection_init` payload, which
// the client sends on each (re)connect: the socket is opened lazily and closed when no
// subscription is left, so a subscription started after a header change uses it.
let latestHeaders = {};

const wsClient = createClient({
  url: `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/graphql/ws`,
  connectionParams: () => latestHeaders,
  lazy: true,
});

const httpFetcher = createGraphiQLFetcher({
  url: `${location.origin}/graphql`,
  wsClient,
});

function fetcher(params, options) {
  latestHeaders = (options && options.headers) || {};
  return httpFetcher(params, options);
}

createRoot(document.getElementById('graphiql')).render(
  <StrictMode>
    <GraphiQL fetcher={fetcher} defaultQuery={DEFAULT_QUERY} isHeadersEditorEnabled />
  </StrictMode>,
);
